package labtest_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/e2e/labtest"
)

// ctx gives each step of a test a deadline well under the test's budget.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestTwoDUTs(t *testing.T) {
	t.Parallel()
	a, b := labtest.New(t, "alpha"), labtest.New(t, "beta")

	require.NotEqual(t, a.Host, b.Host, "each DUT has its own address")
	require.NotEqual(t, a.User, b.User, "each DUT has its own user")
	require.NotEqual(t, a.Namespace, b.Namespace)
	require.NotEqual(t, a.KnownHostKey, b.KnownHostKey)
	for _, d := range []*labtest.DUT{a, b} {
		require.Equal(t, 22, d.Port)
		require.True(t, strings.HasPrefix(d.Host, "10.213."), d.Host)
		require.True(t, strings.HasPrefix(d.KnownHostKey, "ssh-ed25519 AAAA"), d.KnownHostKey)
		fi, err := os.Stat(d.KeyFile)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		known, err := os.ReadFile(d.KnownHostsFile)
		require.NoError(t, err)
		require.Equal(t, d.Host+" "+d.KnownHostKey+"\n", string(known))

		out, err := d.Run(ctx(t), "echo hello")
		require.NoError(t, err)
		require.Equal(t, "hello\n", out)

		// The session is the DUT's user, connected to the DUT's address.
		out, err = d.Run(ctx(t), `id -un; echo "$SSH_CONNECTION"`)
		require.NoError(t, err)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Len(t, lines, 2, out)
		require.Equal(t, d.User, lines[0])
		require.Equal(t, d.Host+" 22", strings.Join(strings.Fields(lines[1])[2:], " "))
	}

	// The key of one DUT opens no other: each sshd admits only its own user.
	cross := exec.CommandContext(ctx(t), "ssh", "-F", "none", "-i", a.KeyFile, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile="+b.KnownHostsFile, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-n", "--", a.User+"@"+b.Host, "true")
	out, err := cross.CombinedOutput()
	require.Error(t, err, "%s", out)
	require.Contains(t, string(out), "Permission denied")
}

func TestRunExitCode(t *testing.T) {
	t.Parallel()
	d := labtest.New(t, "exit")
	out, err := d.Run(ctx(t), "echo out; echo err >&2; exit 3")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 3, exit.ExitCode())
	require.Contains(t, out, "out\n")
	require.Contains(t, out, "err\n")
}

func TestPower(t *testing.T) {
	t.Parallel()
	d := labtest.New(t, "power")
	require.True(t, d.Up())

	require.NoError(t, d.PowerOff())
	require.False(t, d.Up())
	start := time.Now()
	out, err := d.Run(ctx(t), "echo hello")
	require.Error(t, err)
	require.Contains(t, out, "Connection refused")
	require.Less(t, time.Since(start), 2*time.Second, "a powered-off DUT refuses at once")
	// Powering off twice is harmless.
	require.NoError(t, d.PowerOff())

	require.NoError(t, d.PowerOn())
	require.True(t, d.Up())
	out, err = d.Run(ctx(t), "echo hello")
	require.NoError(t, err)
	require.Equal(t, "hello\n", out)
	// Powering on twice leaves the running sshd alone.
	require.NoError(t, d.PowerOn())
	out, err = d.Run(ctx(t), "echo hello")
	require.NoError(t, err, out)
}

func TestPowerCommands(t *testing.T) {
	t.Parallel()
	d := labtest.New(t, "commands")
	on, off, reset := d.PowerCommands()
	for _, c := range []string{on, off, reset} {
		path := strings.Trim(c, "'")
		require.Equal(t, d.Dir, filepath.Dir(path))
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.NotZero(t, fi.Mode().Perm()&0o111, "%s is executable", path)
	}
	// The worker runs them with a bare environment, as a separate process.
	sh := func(command string) {
		t.Helper()
		cmd := exec.CommandContext(ctx(t), "sh", "-c", command)
		cmd.Env = []string{}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s: %s", command, out)
	}

	sh(off)
	require.False(t, d.Up())
	out, err := d.Run(ctx(t), "true")
	require.Error(t, err)
	require.Contains(t, out, "Connection refused")

	sh(on)
	require.True(t, d.Up(), "the power-on command returns once sshd listens")
	_, err = d.Run(ctx(t), "sleep 300 >/dev/null 2>&1 &")
	require.NoError(t, err)
	require.Contains(t, processes(t, d), "sleep 300")

	// A reset is a power cycle: what ran before it is gone, sshd is back.
	sh(reset)
	require.True(t, d.Up())
	require.NotContains(t, processes(t, d), "sleep 300")
	out, err = d.Run(ctx(t), "echo hello")
	require.NoError(t, err)
	require.Equal(t, "hello\n", out)
}

func TestProcesses(t *testing.T) {
	t.Parallel()
	d := labtest.New(t, "procs")
	require.Empty(t, processes(t, d))

	out, err := d.Run(ctx(t), "sleep 300 >/dev/null 2>&1 & echo $!")
	require.NoError(t, err)
	// The session's own sshd process may take a moment to exit after ssh.
	require.Eventually(t, func() bool { return slices.Equal([]string{"sleep 300"}, processes(t, d)) },
		5*time.Second, 20*time.Millisecond, "the session has ended, its sleep has not")

	out, err = d.Run(ctx(t), "kill "+strings.TrimSpace(out))
	require.NoError(t, err, out)
	require.Eventually(t, func() bool { return !slices.Contains(processes(t, d), "sleep 300") },
		5*time.Second, 20*time.Millisecond, "the killed process is gone")

	// Powering off kills what runs on the DUT.
	_, err = d.Run(ctx(t), "sleep 300 >/dev/null 2>&1 &")
	require.NoError(t, err)
	require.NoError(t, d.PowerOff())
	require.Empty(t, processes(t, d))
}

func TestCleanup(t *testing.T) {
	t.Parallel()
	var (
		d       *labtest.DUT
		sleep   string // pid of a process started on the DUT
		ifindex string // of the host end of the DUT's veth pair
	)
	t.Run("dut", func(t *testing.T) {
		d = labtest.New(t, "cleanup")
		out, err := d.Run(ctx(t), "sleep 300 >/dev/null 2>&1 & echo $!")
		require.NoError(t, err)
		sleep = strings.TrimSpace(out)
		require.FileExists(t, filepath.Join("/proc", sleep, "cmdline"))
		require.Contains(t, ipOutput(t, "netns", "list"), d.Namespace)
		require.NotEmpty(t, sshdsOf(t, d), "its sshd runs")
		link := strings.Fields(ipOutput(t, "-o", "-4", "addr", "show", "to", hostEnd(t, d.Host)+"/32"))
		require.NotEmpty(t, link, "the host end of the veth pair has the DUT's .1")
		ifindex = link[0]
	})
	require.NotNil(t, d)

	// The DUT's slot, with its address and user, may already serve a DUT of
	// another test: look for this DUT's own namespace, link and processes.
	require.NotContains(t, ipOutput(t, "netns", "list"), d.Namespace, "namespace deleted")
	for line := range strings.Lines(ipOutput(t, "-o", "link", "show")) {
		require.False(t, strings.HasPrefix(line, ifindex+" "), "veth deleted: %s", line)
	}
	if status, err := os.ReadFile(filepath.Join("/proc", sleep, "status")); err == nil {
		require.Contains(t, string(status), "zombie", "the DUT's processes are killed")
	}
	require.Empty(t, sshdsOf(t, d), "no sshd of the DUT is left")
	_, err := os.Stat(d.Dir)
	require.ErrorIs(t, err, os.ErrNotExist, "the DUT's directory is removed")
}

// processes returns d.Processes, failing t on an error.
func processes(t *testing.T, d *labtest.DUT) []string {
	t.Helper()
	ps, err := d.Processes(ctx(t))
	require.NoError(t, err)
	return ps
}

// ipOutput runs ip with args on the host.
func ipOutput(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx(t), "ip", args...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// hostEnd is the host's address on the /30 of the DUT address host (.2 of
// it): .1.
func hostEnd(t *testing.T, host string) string {
	t.Helper()
	a, err := netip.ParseAddr(host)
	require.NoError(t, err)
	return a.Prev().String()
}

// sshdsOf lists the pids of processes whose command line names d's
// directory: its sshd and their session processes.
func sshdsOf(t *testing.T, d *labtest.DUT) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []string
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte(d.Dir)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
