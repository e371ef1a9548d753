package e2e

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/client/cli"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/admin"
	"github.com/kiln-ci/kiln/server/store"
)

// kiln runs the kiln CLI in-process against the bundle's server as alice.
func (b *bundle) kiln(stdin string, args ...string) (code int, stdout, stderr string) {
	b.t.Helper()
	return b.kilnAs("alice", stdin, args...)
}

// kilnAs is kiln with a token of the given user ("admin" is an admin).
func (b *bundle) kilnAs(user, stdin string, args ...string) (code int, stdout, stderr string) {
	b.t.Helper()
	path := filepath.Join(b.dir, "client-"+user+".ini")
	u, err := b.st.UserByName(b.ctx, user)
	require.NoError(b.t, err)
	tok, err := b.st.CreateUserToken(b.ctx, u.ID, "cli")
	require.NoError(b.t, err)
	require.NoError(b.t, cli.WriteConfig(path, "test", cli.ServerConfig{APIURL: b.srv.APIURL(), Scope: "debusine", Token: tok}))
	var out, errOut bytes.Buffer
	code = cli.Main(append([]string{"--config-file", path}, args...), strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// adminCmd runs `kiln-server admin ARGS` against the bundle's database.
func (b *bundle) adminCmd(args ...string) (string, error) {
	b.t.Helper()
	cmd := admin.Command(func(ctx context.Context) (*store.Store, error) { return store.Open(ctx, b.dbURL, b.dir) })
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(b.ctx)
	return out.String(), err
}

func TestCLI(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startWorker("cli-worker", 1, nil)

		code, out, errOut := b.kiln(`{"result": true}`, "create-work-request", "noop", "--data", "-", "--wait")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out, errOut)
		require.Contains(t, out, "result: success")
		require.Contains(t, out, "status: completed")

		code, out, errOut = b.kiln("result: false\n", "create-work-request", "noop", "--wait")
		require.Equal(t, 1, code, "stdout: %s\nstderr: %s", out, errOut)
		require.Contains(t, out, "result: failure")

		code, _, errOut = b.kiln(`{"result": "yes"}`, "create-work-request", "noop")
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "/task_data/result")

		code, _, errOut = b.kiln(`{}`, "create-work-request", "no-such-task")
		require.Equal(t, 3, code)
		require.Contains(t, errOut, "not registered")

		code, out, errOut = b.kiln(`host_architecture: s390x`, "create-work-request", "noop")
		require.Equal(t, 0, code, errOut)
		var created struct {
			ID int64 `yaml:"work_request_id"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(out), &created), out)
		id := fmt.Sprint(created.ID)
		b.waitFor("a waiting reason", func() bool {
			return strings.HasPrefix(b.get(created.ID).WaitingReason, "no worker can run it")
		})

		code, out, _ = b.kiln("", "show-work-request", id)
		require.Equal(t, 0, code)
		require.Contains(t, out, "waiting_reason: 'no worker can run it")

		code, _, errOut = b.kiln("", "manage-work-request", id, "--set-priority-adjustment", "-2")
		require.Equal(t, 0, code, errOut)
		require.Equal(t, -2, b.get(created.ID).PriorityAdjustment)

		code, _, errOut = b.kiln("", "abort-work-request", id)
		require.Equal(t, 0, code, errOut)
		require.Equal(t, schemas.StatusAborted, b.get(created.ID).Status)

		code, out, errOut = b.kiln("", "retry-work-request", id)
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "supersedes: "+id)

		code, out, _ = b.kiln("", "list-work-requests", "--limit", "3")
		require.Equal(t, 0, code)
		var listed struct {
			Results []map[string]any `yaml:"results"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(out), &listed), out)
		require.Len(t, listed.Results, 3)

		code, _, errOut = b.kiln("", "show-work-request", "999999")
		require.Equal(t, 3, code)
		require.NotEmpty(t, errOut)
	})
}

func TestWorkerWaitsUntilEnabled(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// A worker that registers on its own starts disabled.
		w := &testWorker{b: b, tokenFile: filepath.Join(b.dir, "self-token")}
		w.cfg = w.cfgFor("self-registered", 1, nil)
		w.start()
		t.Cleanup(w.stop)
		var wk store.Worker
		b.waitFor("the registration", func() bool {
			var err error
			wk, err = b.st.WorkerByName(b.ctx, "self-registered")
			return err == nil
		})
		require.False(t, wk.Enabled)
		wr := b.create(b.user, "noop", `{}`)
		b.waitFor("a waiting reason", func() bool { return b.get(wr.ID).WaitingReason == "no enabled worker" })

		out, err := b.adminCmd("worker", "list")
		require.NoError(t, err)
		require.Contains(t, out, "self-registered")
		_, err = b.adminCmd("worker", "enable", "self-registered")
		require.NoError(t, err)
		got := b.wait(wr.ID)
		require.Equal(t, schemas.ResultSuccess, got.Result)
		require.Equal(t, wk.ID, *got.Worker)

		// Static metadata overrides what the worker reports: pretend it has
		// another noop version and it gets no more noop requests.
		_, err = b.adminCmd("worker", "edit-metadata", "self-registered", "--set", "noop:version=7")
		require.NoError(t, err)
		wr2 := b.create(b.user, "noop", `{}`)
		b.waitFor("a waiting reason naming the override", func() bool {
			return strings.Contains(b.get(wr2.ID).WaitingReason, "noop:version 7")
		})
		// The allowlist wins over the denylist.
		_, err = b.adminCmd("worker", "edit-metadata", "self-registered", "--unset", "noop:version",
			"--set", "tasks_denylist=[noop]", "--set", "tasks_allowlist=[noop]")
		require.NoError(t, err)
		b.srv.Scheduler().Trigger()
		require.Equal(t, schemas.ResultSuccess, b.wait(wr2.ID).Result)

		_, err = b.adminCmd("worker", "edit-metadata", "self-registered", "--unset", "tasks_allowlist")
		require.NoError(t, err)
		wr3 := b.create(b.user, "noop", `{}`)
		b.waitFor("a waiting reason naming the denylist", func() bool {
			return strings.Contains(b.get(wr3.ID).WaitingReason, "tasks_denylist")
		})

		_, err = b.adminCmd("worker", "disable", "self-registered")
		require.NoError(t, err)
		_, err = b.adminCmd("worker", "edit-metadata", "self-registered", "--unset", "tasks_denylist")
		require.NoError(t, err)
		b.srv.Scheduler().Trigger()
		b.waitFor("a waiting reason", func() bool { return b.get(wr3.ID).WaitingReason == "no enabled worker" })

		// Users and tokens.
		tok, err := b.adminCmd("create-user", "bob", "--email", "bob@example.org")
		require.NoError(t, err)
		who, err := clientFor(b, strings.TrimSpace(tok)).WhoAmI(b.ctx)
		require.NoError(t, err)
		require.Equal(t, "bob", who.User)
		_, err = b.adminCmd("create-user", "bob")
		require.Error(t, err)
	})
}
