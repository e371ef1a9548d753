package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
)

// created is what create-work-request prints, as debusine's client does.
type created struct {
	Result        string `json:"result"`
	Message       string `json:"message"`
	WorkRequestID int64  `json:"work_request_id"`
}

// results is the shape of every list kiln prints.
type results[T any] struct {
	Results []T `json:"results"`
}

func newResults[T any](items []T) results[T] {
	if items == nil {
		items = []T{}
	}
	return results[T]{Results: items}
}

func (a *app) createWorkRequestCommand() *cobra.Command {
	var (
		dataFile, reactionsFile, workspace string
		priorityBase                       int
		wait                               bool
	)
	cmd := &cobra.Command{
		Use:   "create-work-request TASK_NAME",
		Short: "Submit a work request",
		Long: `Submit a work request for task TASK_NAME. Its task data is a YAML or JSON
mapping read from --data (a file, or - for standard input). With --wait, follow
the work request until it ends, report each status on standard error, print
it, and exit 0 only if it completed with result success.`,
		Example: `  echo 'result: true' | kiln create-work-request noop --wait
  kiln create-work-request sbuild --data build.yaml --workspace System`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			if dataFile == "-" && reactionsFile == "-" {
				return usageErrorf("--data and --event-reactions cannot both read standard input")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			req := schemas.WorkRequestCreate{TaskName: args[0], Workspace: workspace}
			if req.TaskData, err = a.readData(dataFile); err != nil {
				return err
			}
			if reactionsFile != "" {
				if req.EventReactions, err = a.readData(reactionsFile); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("priority-base") {
				req.PriorityBase = &priorityBase
			}

			wr, err := c.CreateWorkRequest(ctx, req)
			if err != nil {
				return err
			}
			out := newYAMLWriter(a.stdout)
			defer out.close()
			if err := out.write(created{
				Result:        "success",
				Message:       "Work request registered: " + wr.URL,
				WorkRequestID: wr.ID,
			}); err != nil {
				return err
			}
			if !wait {
				return nil
			}

			final, err := c.WaitWorkRequest(ctx, wr.ID, func(w schemas.WorkRequest) {
				fmt.Fprintf(a.stderr, "work request %d: %s\n", w.ID, describeStatus(w))
			})
			if err != nil {
				return err
			}
			if err := out.write(final); err != nil {
				return err
			}
			if final.Status == schemas.StatusCompleted && final.Result == schemas.ResultSuccess {
				return nil
			}
			return &exitError{code: ExitFailed, err: fmt.Errorf("work request %d ended %s", final.ID, describeStatus(final))}
		}),
	}
	f := cmd.Flags()
	f.StringVar(&dataFile, "data", "-", "file with the task data (YAML or JSON mapping); - reads standard input")
	f.StringVar(&reactionsFile, "event-reactions", "", "file with the event reactions (YAML or JSON mapping); - reads standard input (default {})")
	f.StringVar(&workspace, "workspace", "", "workspace of the work request (default: the scope's default workspace)")
	f.IntVar(&priorityBase, "priority-base", 0, "base priority (admins only; default: the server's)")
	f.BoolVar(&wait, "wait", false, "follow the work request until it ends")
	return cmd
}

// describeStatus says a work request's status with what explains it: the
// result once completed, the reason while it waits.
func describeStatus(w schemas.WorkRequest) string {
	switch {
	case w.Status == schemas.StatusCompleted:
		return fmt.Sprintf("%s (%s)", w.Status, w.Result)
	case w.WaitingReason != "" && !w.Status.Terminal():
		return fmt.Sprintf("%s (%s)", w.Status, w.WaitingReason)
	}
	return string(w.Status)
}

// readData reads and parses the YAML or JSON mapping in file, or in standard
// input when file is "-".
func (a *app) readData(file string) ([]byte, error) {
	var (
		b    []byte
		err  error
		name = file
	)
	if file == "-" {
		name = "standard input"
		b, err = io.ReadAll(a.stdin)
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	data, err := parseData(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return data, nil
}

func (a *app) showWorkRequestCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show-work-request ID",
		Short: "Show a work request",
		Args:  idArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			wr, err := c.GetWorkRequest(ctx, id)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, wr)
		}),
	}
}

func (a *app) listWorkRequestsCommand() *cobra.Command {
	var (
		limit        int
		status, task string
	)
	cmd := &cobra.Command{
		Use:   "list-work-requests",
		Short: "List work requests, newest first",
		Args:  cobra.NoArgs,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			if limit <= 0 {
				return usageErrorf("--limit must be positive, not %d", limit)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			wrs, err := c.IterWorkRequests(ctx, client.ListOptions{Limit: limit, Status: status, TaskName: task}, limit)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, newResults(wrs))
		}),
	}
	f := cmd.Flags()
	f.IntVar(&limit, "limit", 20, "list at most this many work requests")
	f.StringVar(&status, "status", "", "list only work requests with this status (pending, running, completed, aborted, blocked)")
	f.StringVar(&task, "task", "", "list only work requests of this task")
	return cmd
}

func (a *app) abortWorkRequestCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "abort-work-request ID",
		Short: "Abort a pending, blocked or running work request",
		Args:  idArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			wr, err := c.AbortWorkRequest(ctx, id)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, wr)
		}),
	}
}

func (a *app) retryWorkRequestCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "retry-work-request ID",
		Short: "Retry an aborted or failed work request; prints the new work request",
		Args:  idArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			id, _ := parseID(args[0])
			c, err := a.client()
			if err != nil {
				return err
			}
			wr, err := c.RetryWorkRequest(ctx, id)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, wr)
		}),
	}
}

func (a *app) manageWorkRequestCommand() *cobra.Command {
	var adjustment int
	cmd := &cobra.Command{
		Use:   "manage-work-request ID",
		Short: "Change a work request's priority adjustment",
		Args:  idArg,
		RunE: a.runE(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			id, _ := parseID(args[0])
			if !cmd.Flags().Changed("set-priority-adjustment") {
				return fmt.Errorf("no changes specified")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			wr, err := c.UpdateWorkRequest(ctx, id, schemas.WorkRequestPatch{PriorityAdjustment: &adjustment})
			if err != nil {
				return err
			}
			return printYAML(a.stdout, wr)
		}),
	}
	cmd.Flags().IntVar(&adjustment, "set-priority-adjustment", 0, "new priority adjustment (positive values need the permission)")
	return cmd
}

func (a *app) whoamiCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the server takes the configured token for",
		Args:  cobra.NoArgs,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			w, err := c.WhoAmI(ctx)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, w)
		}),
	}
}

func (a *app) listWorkersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list-workers",
		Short: "List the workers",
		Args:  cobra.NoArgs,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ws, err := c.ListWorkers(ctx)
			if err != nil {
				return err
			}
			return printYAML(a.stdout, newResults(ws))
		}),
	}
}
