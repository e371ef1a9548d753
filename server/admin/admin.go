// Package admin is `kiln-server admin`: user, token and worker management
// that works directly on the store, so an admin can use it on the server
// machine without a token. It prints YAML or plain lines for scripts.
package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/server/store"
)

// Opener opens the store the admin commands work on.
type Opener func(ctx context.Context) (*store.Store, error)

// Command returns the `admin` command tree.
func Command(open Opener) *cobra.Command {
	root := &cobra.Command{
		Use:   "admin",
		Short: "Manage users, tokens and workers directly in the database",
	}
	with := func(f func(cmd *cobra.Command, st *store.Store, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			return f(cmd, st, args)
		}
	}

	var email string
	var isAdmin bool
	var userExpires string
	createUser := &cobra.Command{
		Use:   "create-user USERNAME",
		Short: "Create a user and print a new token for it",
		Args:  cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			expires, err := expiresFlag(cmd, userExpires, time.Now())
			if err != nil {
				return err
			}
			u, err := st.CreateUser(cmd.Context(), args[0], email, isAdmin)
			if err != nil {
				return err
			}
			return createToken(cmd, st, u.ID, "created with the user", expires)
		}),
	}
	createUser.Flags().StringVar(&email, "email", "", "the user's e-mail address")
	createUser.Flags().BoolVar(&isAdmin, "admin", false, "make the user an admin (may set priorities, abort anything)")
	createUser.Flags().StringVar(&userExpires, "expires", "", expiresUsage)

	var comment, tokenExpires string
	createTok := &cobra.Command{
		Use:   "create-token USERNAME",
		Short: "Create a new token for a user and print it (only its hash is stored)",
		Args:  cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			expires, err := expiresFlag(cmd, tokenExpires, time.Now())
			if err != nil {
				return err
			}
			u, err := st.UserByName(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return createToken(cmd, st, u.ID, comment, expires)
		}),
	}
	createTok.Flags().StringVar(&comment, "comment", "", "what the token is for")
	createTok.Flags().StringVar(&tokenExpires, "expires", "", expiresUsage)

	root.AddCommand(createUser, createTok, workerCommand(with))
	return root
}

const expiresUsage = "when the token stops working: a duration from now (720h), an RFC 3339 time " +
	"(2026-01-31T18:00:00Z) or a date (2026-01-31, at 00:00 local time); default: never"

// createToken makes a user token and prints it on stdout; an expiry, if it
// has one, goes to stderr, so that scripts read only the token.
func createToken(cmd *cobra.Command, st *store.Store, userID int64, comment string, expires time.Time) error {
	tok, err := st.CreateUserTokenExpiring(cmd.Context(), userID, comment, expires)
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), tok)
	if !expires.IsZero() {
		fmt.Fprintf(cmd.ErrOrStderr(), "The token expires at %s.\n", expires.Format(time.RFC3339))
	}
	return nil
}

// expiresFlag parses the --expires value of cmd, if it was given, with
// parseExpiry; the zero time means that the token never expires.
func expiresFlag(cmd *cobra.Command, value string, now time.Time) (time.Time, error) {
	if !cmd.Flags().Changed("expires") {
		return time.Time{}, nil
	}
	return parseExpiry(value, now)
}

// parseExpiry reads an --expires value: a Go duration counted from now
// (720h), an RFC 3339 time, or a date YYYY-MM-DD meaning the start of that
// day in now's time zone. A duration that is not positive and a time that
// is not after now are errors.
func parseExpiry(value string, now time.Time) (time.Time, error) {
	v := strings.TrimSpace(value)
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--expires %s: the duration must be positive", value)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		t, err = time.ParseInLocation(time.DateOnly, v, now.Location())
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("--expires %q: want a duration (720h), an RFC 3339 time (2026-01-31T18:00:00Z) or a date (2026-01-31)", value)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("--expires %s: that time has passed (it is now %s)", value, now.Format(time.RFC3339))
	}
	return t, nil
}

type runner func(f func(cmd *cobra.Command, st *store.Store, args []string) error) func(*cobra.Command, []string) error

func workerCommand(with runner) *cobra.Command {
	w := &cobra.Command{Use: "worker", Short: "List, create, enable, disable and edit workers"}

	list := &cobra.Command{
		Use:   "list",
		Short: "List workers",
		Args:  cobra.NoArgs,
		RunE: with(func(cmd *cobra.Command, st *store.Store, _ []string) error {
			ws, err := st.Workers(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTYPE\tENABLED\tCONCURRENCY\tACTIVE\tLAST SEEN")
			for _, wk := range ws {
				seen := "never"
				if wk.LastSeenAt.Valid {
					seen = wk.LastSeenAt.Time.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%t\t%d\t%d\t%s\n", wk.ID, wk.Name, wk.WorkerType, wk.Enabled, wk.EffectiveConcurrency(), wk.Active, seen)
			}
			return tw.Flush()
		}),
	}

	var workerType string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Pre-create an enabled worker and print a one-time activation token for it",
		Long: "Pre-create an enabled worker and print a one-time activation token. Put the token in the\n" +
			"worker's activation token file (--activation-token-file); on first start the worker\n" +
			"registers with it and is enabled at once.",
		Args: cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			wk, err := st.CreateWorker(cmd.Context(), args[0], workerType)
			if err != nil {
				return err
			}
			tok, err := st.CreateActivationToken(cmd.Context(), wk.ID)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		}),
	}
	create.Flags().StringVar(&workerType, "worker-type", "external", "external, celery or signing")

	setEnabled := func(enabled bool) func(cmd *cobra.Command, st *store.Store, args []string) error {
		return func(cmd *cobra.Command, st *store.Store, args []string) error {
			wk, err := st.WorkerByName(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return st.SetWorkerEnabled(cmd.Context(), wk.ID, enabled)
		}
	}
	enable := &cobra.Command{Use: "enable NAME", Short: "Enable a worker", Args: cobra.ExactArgs(1), RunE: with(setEnabled(true))}
	disable := &cobra.Command{Use: "disable NAME", Short: "Disable a worker (it gets no new work)", Args: cobra.ExactArgs(1), RunE: with(setEnabled(false))}

	var sets, unsets []string
	var fromFile string
	var concurrency int
	edit := &cobra.Command{
		Use:   "edit-metadata NAME",
		Short: "Edit a worker's static metadata, which overrides what the worker reports",
		Long: "Edit a worker's static metadata. Static keys override the worker's dynamic metadata\n" +
			"(for example tasks_allowlist, tasks_denylist, system:architectures, noop:version).\n" +
			"Values given with --set are parsed as YAML: --set tasks_allowlist='[noop]' --set noop:version=1.",
		Args: cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			wk, err := st.WorkerByName(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			md := map[string]any{}
			if err := json.Unmarshal([]byte(wk.StaticMetadata), &md); err != nil {
				return fmt.Errorf("stored static metadata: %w", err)
			}
			if fromFile != "" {
				md, err = readYAMLFile(fromFile)
				if err != nil {
					return err
				}
			}
			for _, kv := range sets {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--set %q: use KEY=VALUE", kv)
				}
				var val any
				if err := yaml.Unmarshal([]byte(v), &val); err != nil {
					return fmt.Errorf("--set %s: %w", k, err)
				}
				md[k] = jsonable(val)
			}
			for _, k := range unsets {
				delete(md, k)
			}
			if err := st.SetStaticMetadata(cmd.Context(), wk.ID, md); err != nil {
				return err
			}
			if cmd.Flags().Changed("concurrency") {
				if err := st.SetConcurrencyOverride(cmd.Context(), wk.ID, concurrency); err != nil {
					return err
				}
			}
			out, _ := yaml.Marshal(map[string]any{"static_metadata": md})
			_, err = cmd.OutOrStdout().Write(out)
			return err
		}),
	}
	edit.Flags().StringArrayVar(&sets, "set", nil, "set KEY=VALUE (VALUE is YAML); repeatable")
	edit.Flags().StringArrayVar(&unsets, "unset", nil, "remove KEY; repeatable")
	edit.Flags().StringVar(&fromFile, "file", "", "replace the static metadata with this YAML or JSON mapping")
	edit.Flags().IntVar(&concurrency, "concurrency", 0, "set the worker's concurrency (0 clears the override)")

	w.AddCommand(list, create, enable, disable, edit)
	return w
}

func readYAMLFile(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var md map[string]any
	if err := yaml.Unmarshal(b, &md); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if md == nil {
		md = map[string]any{}
	}
	for k, v := range md {
		md[k] = jsonable(v)
	}
	return md, nil
}

// jsonable turns YAML's map[any]any-free values into JSON-ready ones.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}
