// Command kiln-gendoc writes the manual pages and the bash completion
// scripts of kiln-server, kiln-worker and kiln from their cobra command
// trees, so that the documentation installed by the Debian packages is the
// one the binaries were built with (debian/rules runs it at build time).
//
//	kiln-gendoc --man-dir DIR --completion-dir DIR [--source "Kiln 1.0"] [--date 2006-01-02]
//
// It writes one page per command (kiln-server-admin-worker-enable.8 for
// `kiln-server admin worker enable`): kiln-server and kiln-worker in
// section 8, kiln in section 1. The page date is --date, else the time in
// SOURCE_DATE_EPOCH (set by dpkg-buildpackage), else today, so that a
// rebuild of the same source gives the same pages.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	clientcli "github.com/kiln-ci/kiln/client/cli"
	"github.com/kiln-ci/kiln/config"
	servercli "github.com/kiln-ci/kiln/server/cli"
	workercli "github.com/kiln-ci/kiln/worker/cli"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-gendoc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kiln-gendoc", flag.ContinueOnError)
	manDir := fs.String("man-dir", "", "write the manual pages here (empty: none)")
	complDir := fs.String("completion-dir", "", "write the bash completion scripts here, one file per command (empty: none)")
	source := fs.String("source", "Kiln", "the page footer's source, e.g. \"Kiln 0.1.0\"")
	date := fs.String("date", "", "the pages' date, YYYY-MM-DD (default: SOURCE_DATE_EPOCH, else today)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *manDir == "" && *complDir == "" {
		return errors.New("nothing to do: give --man-dir and/or --completion-dir")
	}
	day, err := pageDate(*date)
	if err != nil {
		return err
	}
	for _, t := range trees() {
		if *manDir != "" {
			if err := os.MkdirAll(*manDir, 0o755); err != nil {
				return err
			}
			m := manual{section: t.section, date: day, source: *source, env: t.env, fileKeys: t.fileKeys, related: t.related}
			if err := m.writeTree(*manDir, t.root); err != nil {
				return fmt.Errorf("%s: %w", t.root.Name(), err)
			}
		}
		if *complDir != "" {
			if err := os.MkdirAll(*complDir, 0o755); err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := t.root.GenBashCompletionV2(&buf, true); err != nil {
				return fmt.Errorf("%s: bash completion: %w", t.root.Name(), err)
			}
			if err := os.WriteFile(filepath.Join(*complDir, t.root.Name()), buf.Bytes(), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// tree is one command's tree and how its pages describe it.
type tree struct {
	root    *cobra.Command
	section string
	// env holds the flags that are also KILN_* environment variables;
	// the page says so next to each.
	env map[*pflag.Flag]bool
	// fileKeys: the env flags are also keys of the YAML config file.
	fileKeys bool
	// related are pages for SEE ALSO on the root page.
	related []string
}

func trees() []tree {
	// The client's default configuration file lies below the user's
	// configuration directory; without this the page would show the home
	// directory of whoever built the package.
	os.Unsetenv("XDG_CONFIG_HOME")
	os.Setenv("HOME", "~")

	server := servercli.Command(nil)
	worker := workercli.Command(nil)
	client := clientcli.NewCommand(os.Stdin, io.Discard, io.Discard)
	// Every option of kiln-server and kiln-worker is an environment
	// variable (package config, applied to the root's whole flag set); of
	// kiln only the global flags are, and their usage says so already.
	// --config names the file before the variables are read, so KILN_CONFIG
	// does not choose it.
	serverEnv := flagSet(server.Flags(), server.PersistentFlags())
	delete(serverEnv, server.PersistentFlags().Lookup("config"))
	workerEnv := flagSet(worker.Flags(), worker.PersistentFlags())
	delete(workerEnv, worker.Flags().Lookup("config"))
	return []tree{
		{root: server, section: "8", env: serverEnv, fileKeys: true, related: []string{"kiln-worker(8)", "kiln(1)"}},
		{root: worker, section: "8", env: workerEnv, fileKeys: true, related: []string{"kiln-server(8)", "kiln(1)"}},
		{root: client, section: "1", related: []string{"kiln-server(8)", "kiln-worker(8)"}},
	}
}

func flagSet(sets ...*pflag.FlagSet) map[*pflag.Flag]bool {
	m := map[*pflag.Flag]bool{}
	for _, s := range sets {
		s.VisitAll(func(f *pflag.Flag) { m[f] = true })
	}
	return m
}

func pageDate(s string) (time.Time, error) {
	if s != "" {
		return time.Parse(time.DateOnly, s)
	}
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", epoch, err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// manual writes the pages of one command tree.
type manual struct {
	section  string
	date     time.Time
	source   string
	env      map[*pflag.Flag]bool
	fileKeys bool
	related  []string
}

// pageName is the page of cmd: its command path with dashes.
func pageName(cmd *cobra.Command) string {
	return strings.ReplaceAll(cmd.CommandPath(), " ", "-")
}

// documented reports whether cmd gets a page and a place in its parent's
// list: not hidden, deprecated or cobra's own help and completion commands.
func documented(cmd *cobra.Command) bool {
	if !cmd.HasParent() {
		return true
	}
	return cmd.IsAvailableCommand() && cmd.Name() != "help" && cmd.Name() != "completion"
}

func (m manual) writeTree(dir string, cmd *cobra.Command) error {
	if !documented(cmd) {
		return nil
	}
	var buf bytes.Buffer
	m.page(&buf, cmd)
	name := filepath.Join(dir, pageName(cmd)+"."+m.section)
	if err := os.WriteFile(name, buf.Bytes(), 0o644); err != nil {
		return err
	}
	for _, c := range cmd.Commands() {
		if err := m.writeTree(dir, c); err != nil {
			return err
		}
	}
	return nil
}

// page writes the roff source of cmd's page to w.
func (m manual) page(w *bytes.Buffer, cmd *cobra.Command) {
	name := pageName(cmd)
	fmt.Fprintf(w, ".\\\" Generated by kiln-gendoc from the %s command; do not edit.\n", cmd.Root().Name())
	fmt.Fprintf(w, ".TH %s %s %s %s %s\n", quote(strings.ToUpper(name)), m.section,
		quote(m.date.Format(time.DateOnly)), quote(m.source), quote("Kiln manual"))
	// Option names and URLs must not be hyphenated or stretched.
	w.WriteString(".nh\n.ad l\n")
	w.WriteString(".SH NAME\n")
	fmt.Fprintf(w, "%s \\- %s\n", escape(name), escape(strings.TrimSuffix(cmd.Short, ".")))

	w.WriteString(".SH SYNOPSIS\n")
	m.synopsis(w, cmd)

	w.WriteString(".SH DESCRIPTION\n")
	desc := cmd.Long
	if desc == "" {
		desc = cmd.Short
	}
	text(w, sentence(desc))
	if len(cmd.Aliases) > 0 {
		fmt.Fprintf(w, ".PP\nAliases: %s.\n", escape(strings.Join(cmd.Aliases, ", ")))
	}

	if subs := subcommands(cmd); len(subs) > 0 {
		w.WriteString(".SH COMMANDS\n")
		for _, c := range subs {
			fmt.Fprintf(w, ".TP\n.B %s\n%s\n", escape(c.Name()), escapeLine(sentence(c.Short)))
			fmt.Fprintf(w, "See \\fB%s\\fR(%s).\n", escape(pageName(c)), m.section)
		}
	}
	m.options(w, "OPTIONS", cmd.NonInheritedFlags())
	m.options(w, "OPTIONS INHERITED FROM PARENT COMMANDS", cmd.InheritedFlags())
	if cmd.Example != "" {
		w.WriteString(".SH EXAMPLES\n.nf\n.RS 4\n")
		for _, line := range strings.Split(strings.Trim(cmd.Example, "\n"), "\n") {
			fmt.Fprintf(w, "%s\n", escapeLine(strings.TrimPrefix(line, "  ")))
		}
		w.WriteString(".RE\n.fi\n")
	}

	var see []string
	if cmd.HasParent() {
		see = append(see, fmt.Sprintf("\\fB%s\\fR(%s)", escape(pageName(cmd.Parent())), m.section))
	} else {
		for _, r := range m.related {
			page, sec, _ := strings.Cut(strings.TrimSuffix(r, ")"), "(")
			see = append(see, fmt.Sprintf("\\fB%s\\fR(%s)", escape(page), sec))
		}
	}
	for _, c := range subcommands(cmd) {
		see = append(see, fmt.Sprintf("\\fB%s\\fR(%s)", escape(pageName(c)), m.section))
	}
	if len(see) > 0 {
		w.WriteString(".SH SEE ALSO\n")
		w.WriteString(strings.Join(see, ",\n") + "\n")
	}
}

func subcommands(cmd *cobra.Command) []*cobra.Command {
	var subs []*cobra.Command
	for _, c := range cmd.Commands() {
		if documented(c) {
			subs = append(subs, c)
		}
	}
	return subs
}

// synopsis writes the command path in bold and the rest of its Use line
// (arguments, placeholders in upper case) in italics; a command with
// subcommands gets a second line for them.
func (m manual) synopsis(w *bytes.Buffer, cmd *cobra.Command) {
	opts := ""
	if cmd.NonInheritedFlags().HasAvailableFlags() || cmd.InheritedFlags().HasAvailableFlags() {
		opts = " [\\fIOPTIONS\\fR]"
	}
	var lines []string
	if cmd.Runnable() {
		_, rest, _ := strings.Cut(cmd.Use, " ")
		var words []string
		for _, word := range strings.Fields(rest) {
			words = append(words, italicPlaceholders(word))
		}
		lines = append(lines, strings.TrimSpace(opts+" "+strings.Join(words, " ")))
	}
	if cmd.HasAvailableSubCommands() {
		lines = append(lines, "\\fICOMMAND\\fR [\\fIARGUMENTS\\fR]"+opts)
	}
	for i, l := range lines {
		if i > 0 {
			w.WriteString(".br\n")
		}
		fmt.Fprintf(w, ".B %s\n", escape(cmd.CommandPath()))
		if l != "" {
			w.WriteString(l + "\n")
		}
	}
}

// italicPlaceholders sets the upper-case words of a usage word (TASK_NAME,
// [--reason TEXT]) in italics and escapes the rest.
func italicPlaceholders(word string) string {
	var b strings.Builder
	start := -1
	flush := func(end int) {
		if start < 0 {
			return
		}
		ph := word[start:end]
		if strings.ToUpper(ph) == ph && strings.ContainsAny(ph, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			b.WriteString("\\fI" + escape(ph) + "\\fR")
		} else {
			b.WriteString(escape(ph))
		}
		start = -1
	}
	for i, r := range word {
		if r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if start < 0 {
				start = i
			}
			continue
		}
		flush(i)
		b.WriteString(escape(string(r)))
	}
	flush(len(word))
	return b.String()
}

// options writes one section of flags, as cobra prints them in --help:
// name, value placeholder, usage and default.
func (m manual) options(w *bytes.Buffer, title string, fs *pflag.FlagSet) {
	var flags []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && f.Name != "help" {
			flags = append(flags, f)
		}
	})
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(w, ".SH %s\n", title)
	for _, f := range flags {
		varname, usage := pflag.UnquoteUsage(f)
		w.WriteString(".TP\n")
		head := "\\fB\\-\\-" + escape(f.Name) + "\\fR"
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			head = "\\fB\\-" + escape(f.Shorthand) + "\\fR, " + head
		}
		if varname != "" {
			head += " \\fI" + escape(varname) + "\\fR"
		}
		w.WriteString(head + "\n")
		w.WriteString(escapeLine(sentence(usage)) + "\n")
		var notes []string
		if def := defaultText(f); def != "" {
			notes = append(notes, "Default: "+escape(def)+".")
		}
		if m.env[f] {
			notes = append(notes, "Environment: \\fB"+escape(config.EnvName("KILN_", f.Name))+"\\fR.")
			if m.fileKeys {
				notes = append(notes, "Config file key: \\fB"+escape(f.Name)+"\\fR.")
			}
		}
		if len(notes) > 0 {
			w.WriteString(".br\n" + strings.Join(notes, " ") + "\n")
		}
		if f.Deprecated != "" {
			fmt.Fprintf(w, "Deprecated: %s\n", escape(f.Deprecated))
		}
	}
}

// sentence ends s with a full stop unless it ends a sentence already.
func sentence(s string) string {
	s = strings.TrimRight(s, " \n")
	if s == "" || strings.HasSuffix(s, ".") || strings.HasSuffix(s, ":") || strings.HasSuffix(s, ")") && strings.HasSuffix(strings.TrimSuffix(s, ")"), ".") {
		return s
	}
	return s + "."
}

// defaultText is the default shown for f, or "" where --help shows none
// either (pflag leaves out zero values: their usage text says what they
// mean, as in "0: never" or "default: the server's").
func defaultText(f *pflag.Flag) string {
	if f.Value.Type() == "string" {
		if f.DefValue == "" {
			return ""
		}
		return strconv.Quote(f.DefValue)
	}
	switch f.DefValue {
	case "", "false", "0", "0s", "[]", "map[]":
		return ""
	}
	return f.DefValue
}

// text writes a cobra Long text: paragraphs separated by blank lines are
// filled; a paragraph whose lines are all indented is an example, kept as
// it is.
func text(w *bytes.Buffer, s string) {
	for _, para := range strings.Split(strings.TrimSpace(s), "\n\n") {
		lines := strings.Split(strings.Trim(para, "\n"), "\n")
		if len(lines) == 0 {
			continue
		}
		indented := true
		for _, l := range lines {
			if strings.TrimSpace(l) != "" && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
				indented = false
			}
		}
		if indented {
			w.WriteString(".PP\n.nf\n.RS 4\n")
			for _, l := range lines {
				w.WriteString(escapeLine(strings.TrimPrefix(strings.TrimPrefix(l, "  "), "\t")) + "\n")
			}
			w.WriteString(".RE\n.fi\n")
			continue
		}
		w.WriteString(".PP\n")
		for _, l := range lines {
			w.WriteString(escapeLine(strings.TrimSpace(l)) + "\n")
		}
	}
}

// escape makes s safe inside a roff line: backslashes print as
// backslashes and every "-" is a real minus, so that options copied from
// the page work.
func escape(s string) string {
	s = strings.ReplaceAll(s, "\\", "\\e")
	return strings.ReplaceAll(s, "-", "\\-")
}

// escapeLine escapes s as a whole text line: a line starting with "." or
// "'" would be a roff request.
func escapeLine(s string) string {
	s = escape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = "\\&" + s
	}
	return s
}

// quote makes s one argument of a roff request.
func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}
