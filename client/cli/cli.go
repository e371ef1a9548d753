package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kiln-ci/kiln/client"
)

// Exit codes of Main, debusine's where they overlap.
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailed: create-work-request --wait saw the work request end
	// other than completed with result success.
	ExitFailed = 1
	// ExitUsage: bad command line (unknown command or flag, bad argument).
	ExitUsage = 2
	// ExitError: configuration, connection, server or data error.
	ExitError = 3
	// ExitInterrupted: SIGINT or SIGTERM arrived.
	ExitInterrupted = 130
)

// envPrefix starts the environment variable of every global flag, for
// example KILN_CONFIG_FILE for --config-file.
const envPrefix = "KILN_"

// exitError carries the exit code of an error from a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports a bad command line found by a command itself.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// app holds the global flags and the streams every command uses.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	configFile string
	server     string
	scope      string
	debug      bool
}

// Main runs the kiln command with args (without the program name) and
// returns its exit code (see ExitOK and the others). It cancels the command
// on SIGINT or SIGTERM.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewCommand(stdin, stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	code := ExitUsage // errors that cobra makes: flags, arguments, commands
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	report(stderr, cmd, err, code)
	return code
}

// report prints err to w for a user.
func report(w io.Writer, cmd *cobra.Command, err error, code int) {
	switch code {
	case ExitUsage:
		fmt.Fprintf(w, "Error: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
		return
	case ExitInterrupted:
		fmt.Fprintln(w, "Interrupted.")
		return
	}
	var pe *client.ProblemError
	if errors.As(err, &pe) {
		title := pe.Problem.Title
		if title == "" {
			title = "the server reported a problem"
		}
		fmt.Fprintf(w, "Error: %s (HTTP %d)\n", title, pe.StatusCode)
		if pe.Problem.Detail != "" {
			fmt.Fprintln(w, pe.Problem.Detail)
		}
		for _, v := range pe.ValidationErrors() {
			fmt.Fprintf(w, "%s: %s\n", v.Pointer, v.Message)
		}
		return
	}
	if client.IsTransient(err) && client.StatusCode(err) == 0 {
		fmt.Fprintf(w, "Error connecting to Kiln: %v\n", err)
		return
	}
	fmt.Fprintf(w, "Error: %v\n", err)
}

// NewCommand returns the kiln command tree reading stdin and writing to
// stdout and stderr. Errors from a command carry the exit code that Main
// returns; Main also prints them, the command does not.
func NewCommand(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	defaultConfig, err := DefaultConfigPath()
	if err != nil {
		defaultConfig = ""
	}

	root := &cobra.Command{
		Use:   "kiln",
		Short: "Submit and follow work requests on a Kiln server",
		Long: `kiln submits work requests to a Kiln server and shows, lists, aborts and
retries them. It reads the server's api-url, scope and token from a client
configuration file in the debusine client's format:

  [General]
  default-server = localhost

  [server:localhost]
  api-url = http://127.0.0.1:8080/api
  scope = debusine
  token = <token>

Every global flag can also be set by an environment variable: KILN_CONFIG_FILE,
KILN_SERVER, KILN_SCOPE, KILN_DEBUG. Output is YAML on standard output
(list-devices prints a table). Exit codes: 0 success, 1 the awaited work
request did not succeed, 2 bad usage, 3 any other error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErrorf("a command is required")
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd.Root().PersistentFlags())
		},
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)

	pf := root.PersistentFlags()
	pf.StringVar(&a.configFile, "config-file", defaultConfig, "client configuration file (env KILN_CONFIG_FILE)")
	pf.StringVar(&a.server, "server", "", "server to use: NAME of a [server:NAME] section, or FQDN/SCOPE (default: [General] default-server; env KILN_SERVER)")
	pf.StringVar(&a.scope, "scope", "", "scope to use instead of the server section's (env KILN_SCOPE)")
	pf.BoolVar(&a.debug, "debug", false, "trace HTTP requests and responses on standard error, tokens hidden (env KILN_DEBUG)")

	root.AddCommand(
		a.createWorkRequestCommand(),
		a.showWorkRequestCommand(),
		a.listWorkRequestsCommand(),
		a.abortWorkRequestCommand(),
		a.retryWorkRequestCommand(),
		a.manageWorkRequestCommand(),
		a.whoamiCommand(),
		a.listWorkersCommand(),
		a.logsCommand(),
		a.createArtifactCommand(),
		a.showArtifactCommand(),
		a.downloadArtifactCommand(),
		a.showArtifactRelationsCommand(),
		a.importDebianArtifactCommand(),
		a.listDevicesCommand(),
		a.showDeviceCommand(),
		a.manageDeviceCommand(),
	)
	return root
}

// applyEnv sets every flag of fs not given on the command line from its
// KILN_ environment variable, when that is set and not empty.
func applyEnv(fs *pflag.FlagSet) error {
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if firstErr != nil || f.Changed {
			return
		}
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := os.Getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				firstErr = fmt.Errorf("%s=%q: %w", name, v, err)
			}
		}
	})
	return firstErr
}

// runE adapts a command body: it passes the command's context and gives
// every error it returns an exit code (ExitError unless it has one).
func (a *app) runE(body func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		err := body(ctx, cmd, args)
		if err == nil {
			return nil
		}
		var ee *exitError
		switch {
		case errors.As(err, &ee):
			return err
		case ctx.Err() != nil && errors.Is(err, context.Canceled):
			return &exitError{code: ExitInterrupted, err: err}
		}
		return &exitError{code: ExitError, err: err}
	}
}

// client returns a Client of the configured server.
func (a *app) client() (*client.Client, error) {
	if a.configFile == "" {
		return nil, errors.New("no client configuration file: the user configuration directory is unknown; use --config-file")
	}
	sc, err := LoadConfig(a.configFile, a.server)
	if err != nil {
		return nil, err
	}
	scope := sc.Scope
	if a.scope != "" {
		scope = a.scope
	}
	opts := []client.Option{client.WithScope(scope)}
	if a.debug {
		fmt.Fprintf(a.stderr, "kiln: %s: api-url %s, scope %q\n", a.configFile, sc.APIURL, scope)
		opts = append(opts, client.WithHTTPClient(&http.Client{
			Transport: &debugTransport{next: http.DefaultTransport, w: a.stderr},
		}))
	}
	return client.New(sc.APIURL, sc.Token, opts...), nil
}

// parseID parses a work request id argument.
func parseID(s string) (int64, error) { return parseIDOf("work request", s) }

// parseIDOf parses the id of a what (a work request, an artifact).
func parseIDOf(what, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("invalid %s id %q: want a positive integer", what, s)
	}
	return id, nil
}

// idArg accepts exactly one argument, a work request id.
var idArg = idArgOf("work request")

// idArgOf accepts exactly one argument, the id of a what.
func idArgOf(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			article := "a"
			if strings.ContainsRune("aeiou", rune(what[0])) {
				article = "an"
			}
			return fmt.Errorf("want one argument, %s %s id; got %d", article, what, len(args))
		}
		_, err := parseIDOf(what, args[0])
		return err
	}
}
