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
	createUser := &cobra.Command{
		Use:   "create-user USERNAME",
		Short: "Create a user and print a new token for it",
		Args:  cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			u, err := st.CreateUser(cmd.Context(), args[0], email, isAdmin)
			if err != nil {
				return err
			}
			tok, err := st.CreateUserToken(cmd.Context(), u.ID, "created with the user")
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		}),
	}
	createUser.Flags().StringVar(&email, "email", "", "the user's e-mail address")
	createUser.Flags().BoolVar(&isAdmin, "admin", false, "make the user an admin (may set priorities, abort anything)")

	var comment string
	createToken := &cobra.Command{
		Use:   "create-token USERNAME",
		Short: "Create a new token for a user and print it (only its hash is stored)",
		Args:  cobra.ExactArgs(1),
		RunE: with(func(cmd *cobra.Command, st *store.Store, args []string) error {
			u, err := st.UserByName(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			tok, err := st.CreateUserToken(cmd.Context(), u.ID, comment)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		}),
	}
	createToken.Flags().StringVar(&comment, "comment", "", "what the token is for")

	root.AddCommand(createUser, createToken, workerCommand(with))
	return root
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
