package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/schemas"
)

func (a *app) logsCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a work request's output",
		Long: `Print the output of work request ID as the worker streamed it. With
--follow, keep printing while it runs until it ends; the exit code is then 0
only if it completed with result success.`,
		Example: "  kiln logs -f 42",
		Args:    idArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			if !follow {
				return c.Log(ctx, id, a.stdout)
			}
			end, err := c.FollowLog(ctx, id, func(ch schemas.LogChunk) {
				fmt.Fprint(a.stdout, ch.Text)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "work request %d: %s", id, end.Status)
			if end.Result != "" {
				fmt.Fprintf(a.stderr, " (%s)", end.Result)
			}
			fmt.Fprintln(a.stderr)
			if end.Status != schemas.StatusCompleted || end.Result != schemas.ResultSuccess {
				return &exitError{code: ExitFailed, err: fmt.Errorf("work request %d ended %s", id, end.Status)}
			}
			return nil
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the work request ends")
	return cmd
}
