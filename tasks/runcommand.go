package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
)

// Program is what a run-command task provides to RunProgram, debusine's
// RunCommandTask hooks. RunProgram calls them in order: FetchInput,
// Configure, CommandLine, (run), CheckOutput, Upload (also after a failure),
// Succeeded.
type Program interface {
	// FetchInput downloads the input artifacts into dir and returns their
	// ids (the debug logs relate to them).
	FetchInput(ctx context.Context, env Env, dir string) ([]int64, error)
	// Configure prepares the run from the inputs in dir.
	Configure(ctx context.Context, env Env, dir string) error
	// CommandLine returns the program and its arguments; the command runs in
	// execDir.
	CommandLine(env Env, inputDir, execDir string) ([]string, error)
	// CheckOutput returns consistency problems found in execDir.
	CheckOutput(env Env, execDir string) []string
	// Upload uploads the artifacts found in execDir; succeeded says whether
	// the command succeeded.
	Upload(ctx context.Context, env Env, execDir string, succeeded bool) error
	// Succeeded decides from the command's exit code whether the task
	// succeeded.
	Succeeded(exitCode int, execDir string) bool
}

// Judge is implemented by programs whose outcome is more than success or
// failure (a build whose dependencies cannot be installed is an error, not
// a failed build). It replaces Succeeded: it returns the result, and for
// ResultError the reason that the user is shown.
type Judge interface {
	Judge(exitCode int, execDir string) (schemas.Result, error)
}

// Finalizer is implemented by programs that must clean up after every run
// of their command, killed or not (power off a device under test, say). It
// runs after the command and everything it started are gone, bounded by the
// runner's finalize timeout; its error is logged in stages.log.
type Finalizer interface {
	Finalize(ctx context.Context, env Env) error
}

// Debug log names, as debusine's.
const (
	StagesLog      = "stages.log"
	CmdOutputLog   = "cmd-output.log"
	ConsistencyLog = "consistency.log"
	// DebugLogsCategory is the category of the artifact holding them.
	DebugLogsCategory = "debusine:work-request-debug-logs"
	cmdLogSeparator   = "--------------------"
)

// debugUploadTimeout bounds the upload of debug logs after an abort, when
// the run's own context is already done.
const debugUploadTimeout = 2 * time.Minute

// RunProgram runs a run-command task's pipeline in env.WorkDir: fetch input
// -> configure -> command line -> run (in its own process group and, where
// possible, cgroup) -> check the output directory -> upload artifacts (also
// after a failure) -> decide (Succeeded, or Judge when the program has it;
// an error result comes back with its reason as the error). Each stage is logged with its time to
// stages.log; the command's line, output, "aborted:", "returncode:" and the
// files it left go to cmd-output.log, its output also to env.Output. The debug
// logs are uploaded at the end as a debusine:work-request-debug-logs artifact
// related to the inputs, whatever happened.
func RunProgram(ctx context.Context, env Env, p Program) (result schemas.Result, err error) {
	if env.WorkDir == "" {
		return schemas.ResultError, errors.New("run-command task without a work directory")
	}
	if env.Output == nil {
		env.Output = io.Discard
	}
	inputDir := filepath.Join(env.WorkDir, "input")
	execDir := filepath.Join(env.WorkDir, "exec")
	debugDir := filepath.Join(env.WorkDir, "debug")
	for _, d := range []string{inputDir, execDir, debugDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return schemas.ResultError, fmt.Errorf("run directories: %w", err)
		}
	}
	stages, err := os.OpenFile(filepath.Join(debugDir, StagesLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return schemas.ResultError, fmt.Errorf("stages log: %w", err)
	}
	stage := func(msg string) {
		fmt.Fprintf(stages, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), msg)
		env.Logger.Info().Str("stage", msg).Msg("run-command stage")
	}
	var inputs []int64
	defer func() {
		stage(fmt.Sprintf("Finished: %s", result))
		stages.Close()
		if env.Artifacts == nil {
			return // no artifact store (unit tests): the logs stay in WorkDir
		}
		uploadCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), debugUploadTimeout)
		defer cancel()
		if uerr := uploadDebugLogs(uploadCtx, env, debugDir, inputs); uerr != nil {
			env.Logger.Warn().Err(uerr).Msg("debug logs not uploaded")
			fmt.Fprintf(env.Output, "kiln: the debug logs could not be uploaded: %v\n", uerr)
		}
	}()
	fail := func(what string, err error) (schemas.Result, error) {
		stage(fmt.Sprintf("%s failed: %v", what, err))
		if cause := context.Cause(ctx); cause != nil {
			return schemas.ResultError, cause
		}
		return schemas.ResultError, fmt.Errorf("%s: %w", strings.ToLower(what), err)
	}

	stage("Fetching input")
	if inputs, err = p.FetchInput(ctx, env, inputDir); err != nil {
		return fail("Fetching input", err)
	}
	stage("Configuring for execution")
	if err := p.Configure(ctx, env, inputDir); err != nil {
		return fail("Configuring for execution", err)
	}
	argv, err := p.CommandLine(env, inputDir, execDir)
	if err != nil || len(argv) == 0 {
		if err == nil {
			err = errors.New("empty command line")
		}
		return fail("Building the command line", err)
	}
	stage("Running " + shellJoin(argv))
	var finalize func(context.Context) error
	if f, ok := p.(Finalizer); ok {
		finalize = func(ctx context.Context) error { return f.Finalize(ctx, env) }
	}
	res, runErr := runCommand(ctx, env, argv, execDir, debugDir, finalize)
	if runErr == nil && finalize != nil {
		if res.FinalizeErr != nil {
			stage(fmt.Sprintf("Finalizing failed: %v", res.FinalizeErr))
		} else {
			stage("Finalized")
		}
	}
	if runErr != nil {
		return fail("Running", runErr)
	}
	aborted := res.Killed
	verdict, reason := schemas.ResultFailure, error(nil)
	switch j, ok := p.(Judge); {
	case aborted:
	case ok:
		verdict, reason = j.Judge(res.ExitCode, execDir)
	case p.Succeeded(res.ExitCode, execDir):
		verdict = schemas.ResultSuccess
	}

	stage("Checking output")
	if problems := p.CheckOutput(env, execDir); len(problems) > 0 {
		sort.Strings(problems)
		_ = os.WriteFile(filepath.Join(debugDir, ConsistencyLog), []byte(strings.Join(problems, "\n")+"\n"), 0o644)
		if verdict == schemas.ResultSuccess {
			verdict = schemas.ResultFailure
		}
	}
	succeeded := verdict == schemas.ResultSuccess
	stage("Uploading artifacts")
	uploadCtx := ctx
	if aborted {
		// Even an aborted run uploads what it has, within a bound.
		var cancel context.CancelFunc
		uploadCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), debugUploadTimeout)
		defer cancel()
	}
	if err := p.Upload(uploadCtx, env, execDir, succeeded); err != nil {
		return fail("Uploading artifacts", err)
	}
	switch {
	case aborted:
		stage(fmt.Sprintf("Aborted: %v", res.Cause))
		return schemas.ResultError, res.Cause
	case succeeded:
		return schemas.ResultSuccess, nil
	case verdict == schemas.ResultError:
		if reason == nil {
			reason = errors.New("the command reported an error")
		}
		stage(fmt.Sprintf("Error: %v", reason))
		return schemas.ResultError, reason
	default:
		return schemas.ResultFailure, nil
	}
}

// runCommand runs argv in execDir, writing cmd-output.log in debusine's
// layout.
func runCommand(ctx context.Context, env Env, argv []string, execDir, debugDir string, finalize func(context.Context) error) (runner.Result, error) {
	cmdLog, err := os.OpenFile(filepath.Join(debugDir, CmdOutputLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return runner.Result{}, fmt.Errorf("command log: %w", err)
	}
	defer cmdLog.Close()
	fmt.Fprintf(cmdLog, "cmd: %s\n", shellJoin(argv))
	fmt.Fprintln(cmdLog, "output (contains stdout and stderr):")
	res, err := runner.Run(ctx, runner.Command{
		Path:   argv[0],
		Args:   argv[1:],
		Dir:    execDir,
		Output: io.MultiWriter(cmdLog, env.Output),
		// The run knows which request and attempt it is, so that it can
		// tell a retry from a first run.
		Env: append(os.Environ(), fmt.Sprintf("KILN_WORK_REQUEST=%d", env.WorkRequestID), fmt.Sprintf("KILN_ATTEMPT=%d", env.Attempt)),
	}, runner.Options{Grace: env.Grace, CgroupParent: env.CgroupParent, Finalize: finalize, Logger: env.Logger, OnStart: env.OnStart})
	returncode := "None"
	if err == nil && !res.Killed {
		returncode = fmt.Sprint(res.ExitCode)
	}
	fmt.Fprintf(cmdLog, "\naborted: %s\n", pyBool(err == nil && res.Killed))
	fmt.Fprintf(cmdLog, "returncode: %s\n", returncode)
	if err != nil {
		fmt.Fprintf(cmdLog, "error: %v\n", err)
	}
	fmt.Fprintln(cmdLog, "\nFiles in working directory:")
	fmt.Fprintln(cmdLog, strings.Join(listFiles(execDir), "\n"))
	fmt.Fprintln(cmdLog, cmdLogSeparator)
	if err == nil && !res.Cgroup && res.CgroupReason != "" {
		env.Logger.Debug().Str("reason", res.CgroupReason).Msg("run without its own cgroup")
	}
	return res, err
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// listFiles returns the paths below dir, relative and sorted.
func listFiles(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

// shellJoin quotes argv for a shell, for logs a user can paste.
func shellJoin(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./-_", r))
		}) < 0 {
			parts[i] = a
			continue
		}
		parts[i] = "'" + strings.ReplaceAll(a, "'", `'"'"'`) + "'"
	}
	return strings.Join(parts, " ")
}

// uploadDebugLogs uploads the files in debugDir as the run's debug-logs
// artifact, related to its inputs.
func uploadDebugLogs(ctx context.Context, env Env, debugDir string, inputs []int64) error {
	files := map[string]string{}
	for _, name := range listFiles(debugDir) {
		files[name] = filepath.Join(debugDir, name)
	}
	_, err := env.Artifacts.Upload(ctx, NewArtifact{Category: DebugLogsCategory, Data: map[string]any{}, Files: files, RelatesTo: inputs})
	return err
}
