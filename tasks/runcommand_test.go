package tasks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

// shProgram runs a shell script as a run-command task.
type shProgram struct {
	script   string
	problems []string
	uploaded []bool
}

func (p *shProgram) FetchInput(context.Context, Env, string) ([]int64, error) { return nil, nil }
func (p *shProgram) Configure(context.Context, Env, string) error             { return nil }
func (p *shProgram) CommandLine(_ Env, _, _ string) ([]string, error) {
	return []string{"sh", "-c", p.script}, nil
}
func (p *shProgram) CheckOutput(Env, string) []string { return p.problems }
func (p *shProgram) Upload(_ context.Context, _ Env, _ string, ok bool) error {
	p.uploaded = append(p.uploaded, ok)
	return nil
}
func (p *shProgram) Succeeded(code int, _ string) bool { return code == 0 }

func runEnv(t *testing.T) (Env, *strings.Builder) {
	var out strings.Builder
	return Env{WorkRequestID: 1, Attempt: 1, WorkDir: t.TempDir(), Output: &out, Logger: zerolog.Nop(), Grace: time.Second,
		CgroupParent: testCgroupParent(t)}, &out
}

func readDebug(t *testing.T, env Env, name string) string {
	b, err := os.ReadFile(filepath.Join(env.WorkDir, "debug", name))
	require.NoError(t, err)
	return string(b)
}

func TestRunProgramLogs(t *testing.T) {
	cases := []struct {
		name, script string
		problems     []string
		result       schemas.Result
		returncode   string
	}{
		{"success", "echo hello; echo err >&2; touch made.txt", nil, schemas.ResultSuccess, "0"},
		{"failure", "echo bad; exit 3", nil, schemas.ResultFailure, "3"},
		{"inconsistent output", "true", []string{"missing .changes"}, schemas.ResultFailure, "0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env, out := runEnv(t)
			p := &shProgram{script: c.script, problems: c.problems}
			res, err := RunProgram(t.Context(), env, p)
			require.NoError(t, err)
			require.Equal(t, c.result, res)
			require.Equal(t, []bool{c.result == schemas.ResultSuccess}, p.uploaded, "upload runs after failures too")

			cmdLog := readDebug(t, env, CmdOutputLog)
			require.True(t, strings.HasPrefix(cmdLog, "cmd: "+shellJoin([]string{"sh", "-c", c.script})+"\noutput (contains stdout and stderr):\n"), cmdLog)
			require.Contains(t, cmdLog, "\naborted: False\nreturncode: "+c.returncode+"\n\nFiles in working directory:\n")
			require.True(t, strings.HasSuffix(cmdLog, cmdLogSeparator+"\n"), cmdLog)
			if c.name == "success" {
				require.Contains(t, cmdLog, "hello\nerr\n")
				require.Contains(t, cmdLog, "Files in working directory:\nmade.txt\n")
				require.Equal(t, "hello\nerr\n", out.String())
			}
			stages := readDebug(t, env, StagesLog)
			want := []string{"Fetching input", "Configuring for execution", "Running sh -c", "Checking output", "Uploading artifacts", "Finished: " + string(c.result)}
			lines := strings.Split(strings.TrimSpace(stages), "\n")
			require.Len(t, lines, len(want), stages)
			stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z `)
			for i, w := range want {
				require.Regexp(t, stamp, lines[i])
				require.Contains(t, lines[i], w)
			}
			if len(c.problems) > 0 {
				require.Equal(t, "missing .changes\n", readDebug(t, env, ConsistencyLog))
			}
		})
	}
}

func TestRunProgramAbort(t *testing.T) {
	env, _ := runEnv(t)
	p := &shProgram{script: "echo started; sleep 600"}
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	errStop := errors.New("stop now")
	go func() {
		// Abort once the command has printed that it runs.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if b, _ := os.ReadFile(filepath.Join(env.WorkDir, "debug", CmdOutputLog)); strings.Contains(string(b), "started") {
				cancel(errStop)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	res, err := RunProgram(ctx, env, p)
	require.ErrorIs(t, err, errStop)
	require.Equal(t, schemas.ResultError, res)
	cmdLog := readDebug(t, env, CmdOutputLog)
	require.Contains(t, cmdLog, "\naborted: True\nreturncode: None\n")
	require.Contains(t, readDebug(t, env, StagesLog), "Aborted: stop now")
	require.Equal(t, []bool{false}, p.uploaded, "an aborted run still uploads what it has")
}

func TestShellJoin(t *testing.T) {
	require.Equal(t, `sh -c 'echo a; exit 3' '' 'it'"'"'s' a/b.txt`, shellJoin([]string{"sh", "-c", "echo a; exit 3", "", "it's", "a/b.txt"}))
}

type finalizingProgram struct {
	shProgram
	finalized int
}

func (p *finalizingProgram) Finalize(context.Context, Env) error {
	p.finalized++
	return errors.New("device did not power off")
}

func TestRunProgramFinalizes(t *testing.T) {
	env, _ := runEnv(t)
	p := &finalizingProgram{shProgram: shProgram{script: "exit 0"}}
	res, err := RunProgram(t.Context(), env, p)
	require.NoError(t, err)
	require.Equal(t, schemas.ResultSuccess, res)
	require.Equal(t, 1, p.finalized)
	require.Contains(t, readDebug(t, env, StagesLog), "device did not power off")
}

// judgedProgram decides its outcome with Judge: exit 3 is an error with a
// reason, as sbuild's given-back.
type judgedProgram struct{ shProgram }

func (p *judgedProgram) Judge(code int, _ string) (schemas.Result, error) {
	switch code {
	case 0:
		return schemas.ResultSuccess, nil
	case 3:
		return schemas.ResultError, errors.New("given-back: a dependency is missing")
	case 4:
		return schemas.ResultError, nil
	}
	return schemas.ResultFailure, nil
}

func TestRunProgramJudge(t *testing.T) {
	for _, c := range []struct {
		script string
		result schemas.Result
		reason string
	}{
		{"true", schemas.ResultSuccess, ""},
		{"exit 1", schemas.ResultFailure, ""},
		{"exit 3", schemas.ResultError, "given-back: a dependency is missing"},
		{"exit 4", schemas.ResultError, "the command reported an error"},
	} {
		t.Run(c.script, func(t *testing.T) {
			env, _ := runEnv(t)
			p := &judgedProgram{shProgram{script: c.script}}
			res, err := RunProgram(t.Context(), env, p)
			require.Equal(t, c.result, res)
			if c.reason == "" {
				require.NoError(t, err)
			} else {
				require.EqualError(t, err, c.reason)
				require.Contains(t, readDebug(t, env, StagesLog), "Error: "+c.reason)
			}
			require.Equal(t, []bool{c.result == schemas.ResultSuccess}, p.uploaded, "upload runs whatever the outcome")
		})
	}
}
