package labtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/server/store/storetest"
)

// DUT is one device under test: a network namespace with its own sshd,
// reached from the host at Host:Port as User with the key in KeyFile.
// Commands on it see the host's file system, as User, and start in User's
// home under Dir. Its fields are set by New and must not be changed.
type DUT struct {
	// Name is the name given to New.
	Name string
	// Namespace is the DUT's network namespace, for `ip netns exec`.
	Namespace string
	// Host is the DUT's IPv4 address, .2 of its /30 in 10.213.0.0/16; the
	// host end of its veth pair is .1.
	Host string
	// Port is sshd's port: 22.
	Port int
	// User is the DUT's own account, the only one its sshd admits. No
	// other DUT running at the same time has it.
	User string
	// KeyFile is the client's private key (ed25519, no passphrase, mode
	// 0600), whose public key is User's only authorized key.
	KeyFile string
	// KnownHostKey is sshd's public host key, "ssh-ed25519 AAAA…".
	KnownHostKey string
	// KnownHostsFile is a known_hosts file holding only Host and
	// KnownHostKey.
	KnownHostsFile string
	// Dir is the DUT's own directory, removed at cleanup: keys,
	// sshd_config, sshd.pid, sshd.log, the power scripts and User's home.
	Dir string

	tools       tools
	uid, gid    int // -1 until the account is set up
	link        string
	nsCreated   bool
	onScript    string
	offScript   string
	resetScript string
}

var (
	// seq numbers this process's DUTs, to make their namespace names unique.
	seq atomic.Int64
	// live holds the namespaces this process has created and not yet
	// deleted, so that reapStale tells them from the leftovers of a dead
	// process that had the same pid.
	live sync.Map
	// validName keeps a DUT's name usable in file and namespace names.
	validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// plainPath is a path that needs no quoting in sshd_config.
	plainPath = regexp.MustCompile(`^[A-Za-z0-9/._+-]+$`)
)

// New starts a DUT for t, powered on, and stops and removes it when t and
// its subtests end. It skips t when the machine cannot run DUTs (not root,
// a program missing, no network namespaces), or fails it under
// KILN_REQUIRE_ALL=1. Any number of DUTs may run at once, in one test
// process or in several.
func New(t testing.TB, name string) *DUT {
	t.Helper()
	if !validName.MatchString(name) {
		t.Fatalf("lab DUT name %q: want 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . _ -", name)
	}
	if os.Geteuid() != 0 {
		storetest.Unavailable(t, "lab DUT", errors.New("needs root, for network namespaces and user accounts"))
	}
	tl, err := findTools()
	if err != nil {
		storetest.Unavailable(t, "lab DUT", err)
	}
	ns := fmt.Sprintf("%s-%d-%d-%s", prefix, os.Getpid(), seq.Add(1), name)
	dir, err := newDir(ns)
	if err != nil {
		t.Fatalf("lab DUT %s: %v", name, err)
	}
	d := &DUT{
		Name:      name,
		Namespace: ns,
		Port:      22,
		Dir:       dir,
		tools:     tl,
		uid:       -1,
		gid:       -1,
	}
	t.Cleanup(func() { d.cleanup(t) })

	ctx := context.Background()
	if err := d.setUpHost(ctx); err != nil {
		if errors.Is(err, errNoNamespaces) {
			storetest.Unavailable(t, "lab DUT", err)
		}
		t.Fatalf("lab DUT %s: %v", name, err)
	}
	if err := d.setUpSSH(ctx); err != nil {
		t.Fatalf("lab DUT %s: %v", name, err)
	}
	if err := d.PowerOn(); err != nil {
		t.Fatalf("lab DUT %s: %v\nsshd.log:\n%s", name, err, d.logTail())
	}
	return d
}

// newDir makes the DUT's directory, searchable by its user: sshd reads the
// authorized keys and the shell starts in the home below it as that user.
// Its name starts with the namespace's, so that reapStale finds it.
func newDir(ns string) (string, error) {
	dir, err := os.MkdirTemp("", ns+"-")
	if err != nil {
		return "", fmt.Errorf("make DUT directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("make DUT directory: %w", err)
	}
	if !plainPath.MatchString(dir) {
		os.RemoveAll(dir)
		return "", fmt.Errorf("DUT directory %q: the temporary directory (TMPDIR) must be a plain path, without spaces or quotes", dir)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("DUT directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			os.RemoveAll(dir)
			return "", fmt.Errorf("DUT directory %s: %s is not searchable by other users, so the DUT's user could not reach its home; set TMPDIR elsewhere", dir, p)
		}
		if p == "/" {
			return dir, nil
		}
	}
}

// setUpHost creates the namespace, the veth pair with the DUT's /30 and the
// user account, holding the host lock so that no other DUT takes the same
// slot.
func (d *DUT) setUpHost(ctx context.Context) error {
	// sshd refuses to start without its privilege separation directory,
	// which the ssh service would otherwise create.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("make /run/sshd: %w", err)
	}
	lock, err := lockHost(30 * time.Second)
	if err != nil {
		return err
	}
	defer lock.unlock()
	if err := reapStale(ctx, d.tools.ip); err != nil {
		return fmt.Errorf("delete stale DUTs: %w", err)
	}
	slot, err := freeSlot(ctx, d.tools.ip)
	if err != nil {
		return err
	}
	ip := d.tools.ip
	if _, err := run(ctx, ip, "netns", "add", d.Namespace); err != nil {
		return fmt.Errorf("%w: %w", errNoNamespaces, err)
	}
	d.nsCreated = true
	live.Store(d.Namespace, true)

	link := linkName(slot)
	if _, err := run(ctx, ip, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", d.Namespace); err != nil {
		return err
	}
	d.link = link
	host, dut := slotNet(slot)
	for _, args := range [][]string{
		{"addr", "add", host.String() + "/30", "dev", link},
		{"link", "set", link, "up"},
		{"-n", d.Namespace, "addr", "add", dut.String() + "/30", "dev", "eth0"},
		{"-n", d.Namespace, "link", "set", "eth0", "up"},
		{"-n", d.Namespace, "link", "set", "lo", "up"},
	} {
		if _, err := run(ctx, ip, args...); err != nil {
			return err
		}
	}
	d.Host = dut.String()

	name, uid, gid, err := account(ctx, d.tools, slot, d.home())
	if err != nil {
		return err
	}
	d.User, d.uid, d.gid = name, uid, gid
	// sshd's StrictModes wants the home and ~/.ssh owned by the user or
	// root and writable by no one else, and it reads authorized_keys as the
	// user.
	ssh := filepath.Join(d.home(), ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		return fmt.Errorf("make home: %w", err)
	}
	for p, mode := range map[string]os.FileMode{d.home(): 0o755, ssh: 0o700} {
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("make home: %w", err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			return fmt.Errorf("make home: %w", err)
		}
	}
	return nil
}

// home is the DUT user's home directory.
func (d *DUT) home() string { return filepath.Join(d.Dir, "home") }

// pidFile is where sshd writes its pid once it listens.
func (d *DUT) pidFile() string { return filepath.Join(d.Dir, "sshd.pid") }

// logFile is sshd's log (sshd -E).
func (d *DUT) logFile() string { return filepath.Join(d.Dir, "sshd.log") }

// setUpSSH makes the keys, known_hosts, authorized_keys, sshd_config and
// the power scripts.
func (d *DUT) setUpSSH(ctx context.Context) error {
	d.KeyFile = filepath.Join(d.Dir, "id_ed25519")
	hostKey := filepath.Join(d.Dir, "ssh_host_ed25519_key")
	for _, k := range []string{d.KeyFile, hostKey} {
		if _, err := run(ctx, d.tools.sshKeygen, "-q", "-t", "ed25519", "-N", "", "-C", "kiln lab DUT "+d.Name, "-f", k); err != nil {
			return err
		}
	}
	// ssh refuses a private key that others can read.
	if err := os.Chmod(d.KeyFile, 0o600); err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	clientPub, err := publicKey(d.KeyFile + ".pub")
	if err != nil {
		return err
	}
	if d.KnownHostKey, err = publicKey(hostKey + ".pub"); err != nil {
		return err
	}

	keys := filepath.Join(d.home(), ".ssh", "authorized_keys")
	if err := os.WriteFile(keys, []byte(clientPub+"\n"), 0o600); err != nil {
		return fmt.Errorf("authorized_keys: %w", err)
	}
	if err := os.Chown(keys, d.uid, d.gid); err != nil {
		return fmt.Errorf("authorized_keys: %w", err)
	}

	d.KnownHostsFile = filepath.Join(d.Dir, "known_hosts")
	if err := os.WriteFile(d.KnownHostsFile, []byte(d.Host+" "+d.KnownHostKey+"\n"), 0o644); err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}

	config := filepath.Join(d.Dir, "sshd_config")
	if err := os.WriteFile(config, []byte(d.sshdConfig(hostKey)), 0o644); err != nil {
		return fmt.Errorf("sshd_config: %w", err)
	}
	return d.writeScripts(config)
}

// publicKey returns the "TYPE KEY" of an OpenSSH .pub file, without its
// comment.
func publicKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read public key: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return "", fmt.Errorf("public key %s: malformed %q", path, b)
	}
	return f[0] + " " + f[1], nil
}

// sshdConfig is the DUT's whole sshd configuration: none of the system's
// /etc/ssh/sshd_config applies.
func (d *DUT) sshdConfig(hostKey string) string {
	return fmt.Sprintf(`# sshd_config of Kiln lab DUT %s, written by labtest.
ListenAddress %s:%d
PidFile %s
HostKey %s
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers %s
LogLevel VERBOSE
PrintMotd no
PrintLastLog no
X11Forwarding no
# Workers may open many connections at once (commands, copies, kills).
MaxStartups 100
Subsystem sftp internal-sftp
`, d.Name, d.Host, d.Port, d.pidFile(), hostKey, d.User)
}

// writeScripts writes the power scripts into Dir. Power off kills every
// process in the namespace, as cutting the power would (sessions and what
// they started included), power on starts sshd and waits for its pid file,
// which sshd writes once it listens, and reset does one and then the other.
func (d *DUT) writeScripts(config string) error {
	const header = "#!/bin/sh\n# %s Kiln lab DUT %s (namespace %s); written by labtest.\nset -u\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PATH\n"
	d.onScript = filepath.Join(d.Dir, "power-on")
	d.offScript = filepath.Join(d.Dir, "power-off")
	d.resetScript = filepath.Join(d.Dir, "power-reset")
	scripts := map[string]string{
		d.onScript: fmt.Sprintf(header, "Power on", d.Name, d.Namespace) + fmt.Sprintf(`pidfile=%[1]s
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
	exit 0 # on already
fi
rm -f "$pidfile"
%[2]s netns exec %[3]s %[4]s -f %[5]s -E %[6]s || exit 1
i=0
while [ ! -s "$pidfile" ]; do
	i=$((i + 1))
	if [ "$i" -gt 200 ]; then
		echo "power on DUT %[7]s: sshd did not start within 10 s; see "%[6]s >&2
		exit 1
	fi
	sleep 0.05
done
`, shq(d.pidFile()), shq(d.tools.ip), shq(d.Namespace), shq(d.tools.sshd), shq(config), shq(d.logFile()), d.Name),

		d.offScript: fmt.Sprintf(header, "Power off", d.Name, d.Namespace) + fmt.Sprintf(`i=0
while pids=$(%[1]s netns pids %[2]s) && [ -n "$pids" ]; do
	kill -KILL $pids 2>/dev/null
	i=$((i + 1))
	if [ "$i" -gt 200 ]; then
		echo "power off DUT %[4]s: processes left after 10 s: "$pids >&2
		exit 1
	fi
	sleep 0.05
done
rm -f %[3]s
`, shq(d.tools.ip), shq(d.Namespace), shq(d.pidFile()), d.Name),

		d.resetScript: fmt.Sprintf(header, "Power cycle", d.Name, d.Namespace) +
			fmt.Sprintf("%s && exec %s\n", shq(d.offScript), shq(d.onScript)),
	}
	for path, text := range scripts {
		if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
			return fmt.Errorf("power script: %w", err)
		}
	}
	return nil
}

// shq quotes s for the shell.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// PowerCommands returns shell command lines that power the DUT on, off, and
// off then on, for a worker's device configuration. They work from any
// process running as root, and each returns once the DUT is in its new
// state (sshd listening, or every process of the DUT gone).
func (d *DUT) PowerCommands() (on, off, reset string) {
	return shq(d.onScript), shq(d.offScript), shq(d.resetScript)
}

// PowerOn starts the DUT's sshd, if it is not running, and waits until it
// accepts connections. It runs the power-on command.
func (d *DUT) PowerOn() error {
	if err := d.script(d.onScript); err != nil {
		return fmt.Errorf("power on DUT %s: %w", d.Name, err)
	}
	err := poll(10*time.Second, "wait for sshd to listen", func() (bool, error) { return d.Up(), nil })
	if err != nil {
		return fmt.Errorf("power on DUT %s: %w", d.Name, err)
	}
	return nil
}

// PowerOff kills every process in the DUT (its sshd, sessions and what
// they started) and waits until its port refuses connections. It runs the
// power-off command.
func (d *DUT) PowerOff() error {
	if err := d.script(d.offScript); err != nil {
		return fmt.Errorf("power off DUT %s: %w", d.Name, err)
	}
	err := poll(10*time.Second, "wait for sshd to stop listening", func() (bool, error) { return !d.Up(), nil })
	if err != nil {
		return fmt.Errorf("power off DUT %s: %w", d.Name, err)
	}
	return nil
}

// script runs one of the power scripts.
func (d *DUT) script(path string) error {
	_, err := run(context.Background(), path)
	return err
}

// Up reports whether the DUT's sshd accepts TCP connections.
func (d *DUT) Up() bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(d.Host, strconv.Itoa(d.Port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// sshArgs are the arguments of ssh that run command on the DUT, trusting
// only KnownHostsFile and offering only KeyFile, with no configuration file
// or agent of the host's involved.
func (d *DUT) sshArgs(command string) []string {
	return []string{
		"-F", "none",
		"-i", d.KeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + d.KnownHostsFile,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "ConnectTimeout=5",
		"-n",
		"-p", strconv.Itoa(d.Port),
		"--", d.User + "@" + d.Host, command,
	}
}

// Run runs a shell command on the DUT as User over SSH and returns its
// combined output (ssh's own messages included, such as "Connection
// refused"). A command that exits non-zero gives an error wrapping the
// *exec.ExitError, whose code is the command's, or 255 when ssh failed.
func (d *DUT) Run(ctx context.Context, command string) (string, error) {
	cmd := exec.CommandContext(ctx, d.tools.ssh, d.sshArgs(command)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("run %q on DUT %s: %w: %s", command, d.Name, err, clip(out))
	}
	return string(out), nil
}

// clip shortens output for an error message.
func clip(out []byte) []byte {
	out = bytes.TrimSpace(out)
	if len(out) > 1024 {
		out = append(out[:1024:1024], "…"...)
	}
	return out
}

// Processes returns the command lines (arguments joined by spaces) of the
// live processes running as User, by pid, read from /proc on the host. While
// a command runs over SSH they include its sshd session process, "sshd:
// USER@notty".
func (d *DUT) Processes(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.uid < 0 {
		return nil, fmt.Errorf("processes of DUT %s: no user account", d.Name)
	}
	procs, err := userProcs(d.uid)
	if err != nil {
		return nil, fmt.Errorf("processes of DUT %s: %w", d.Name, err)
	}
	cmds := make([]string, len(procs))
	for i, p := range procs {
		cmds[i] = p.cmdline
	}
	return cmds, nil
}

// cleanup kills every process of the DUT, deletes its veth pair and
// namespace and removes Dir; it logs sshd's log when t has failed. It
// undoes as much of a partial New as was done.
func (d *DUT) cleanup(t testing.TB) {
	ctx := context.Background()
	var errs []error
	if d.nsCreated {
		errs = append(errs, killNamespace(ctx, d.tools.ip, d.Namespace, 10*time.Second))
	}
	if d.uid >= 0 {
		errs = append(errs, killUser(d.uid, 10*time.Second))
	}
	if d.link != "" {
		// Deleting one end deletes the pair now, where deleting the
		// namespace frees its end only when the kernel gets to it.
		if _, err := os.Lstat(filepath.Join("/sys/class/net", d.link)); err == nil {
			_, err := run(ctx, d.tools.ip, "link", "delete", d.link)
			errs = append(errs, err)
		}
	}
	if d.nsCreated {
		_, err := run(ctx, d.tools.ip, "netns", "delete", d.Namespace)
		errs = append(errs, err)
		live.Delete(d.Namespace)
	}
	if t.Failed() {
		if tail := d.logTail(); tail != "" {
			t.Logf("lab DUT %s sshd.log:\n%s", d.Name, tail)
		}
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("clean up lab DUT %s: %v", d.Name, err)
	}
}

// logTail returns the last 4 KiB of sshd's log, for failure messages.
func (d *DUT) logTail() string {
	b, err := os.ReadFile(d.logFile())
	if err != nil {
		return ""
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}
