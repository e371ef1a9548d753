package labtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// prefix starts the names of everything labtest creates on the host:
	// namespaces (prefix-PID-N-NAME), host veth ends and user accounts
	// (prefix+SLOT).
	prefix = "kilnlab"
	// lockFile serialises slot allocation and account changes between the
	// DUTs of every test process on the machine.
	lockFile = "/run/kiln-labtest.lock"
	// accountComment marks the accounts labtest created, so that it never
	// takes over an account of the same name that it did not make.
	accountComment = "Kiln lab test DUT"
	// slots is the number of /30 networks in 10.213.0.0/16.
	slots = 1 << 14
)

// lab is 10.213.0.0/16, the private range the DUTs' /30 networks come from.
var lab = netip.MustParsePrefix("10.213.0.0/16")

// errNoNamespaces marks a machine that cannot create network namespaces
// (a container without CAP_SYS_ADMIN, for one): a missing service, not a bug.
var errNoNamespaces = errors.New("cannot create network namespaces")

// tools holds the absolute paths of the programs labtest runs; the power
// scripts embed them so that they work under any PATH.
type tools struct {
	ip, sshd, ssh, sshKeygen, useradd, usermod string
}

// findTools looks each program up in PATH and then in the sbin directories,
// which a non-login root shell may lack.
func findTools() (tools, error) {
	var missing []string
	find := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs
			}
		}
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
		missing = append(missing, name)
		return ""
	}
	t := tools{
		ip:        find("ip"),
		sshd:      find("sshd"),
		ssh:       find("ssh"),
		sshKeygen: find("ssh-keygen"),
		useradd:   find("useradd"),
		usermod:   find("usermod"),
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("not found: %s (install iproute2, openssh-server, openssh-client, passwd)", strings.Join(missing, ", "))
	}
	return t, nil
}

// run runs a program with a deadline and returns an error that carries its
// output, which is where ip and useradd say what went wrong.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// hostLock is the machine-wide lock on lockFile.
type hostLock struct{ f *os.File }

// lockHost takes the machine-wide lock, polling so that a test process that
// holds it forever makes this one fail instead of hang.
func lockHost(timeout time.Duration) (*hostLock, error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	err = poll(timeout, "lock "+lockFile, func() (bool, error) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
			return false, nil
		default:
			return false, fmt.Errorf("lock %s: %w", lockFile, err)
		}
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	return &hostLock{f: f}, nil
}

// unlock releases the lock; closing the file is what releases a flock.
func (l *hostLock) unlock() { l.f.Close() }

// slotNet returns the host and DUT addresses of slot's /30: .1 and .2 of it.
func slotNet(slot int) (host, dut netip.Addr) {
	b := lab.Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n += uint32(slot) * 4
	host = netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n + 1)})
	dut = netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n + 2)})
	return host, dut
}

// freeSlot returns the lowest slot whose /30 holds no address on the host
// and whose link name is unused. Another test process's DUT holds its slot's
// host address from allocation to cleanup, and the caller holds the host
// lock, so a free slot stays free until the caller has taken it.
func freeSlot(ctx context.Context, ip string) (int, error) {
	out, err := run(ctx, ip, "-o", "-4", "addr", "show")
	if err != nil {
		return 0, err
	}
	taken := map[int]bool{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet" {
				continue
			}
			p, err := netip.ParsePrefix(f[i+1])
			if err != nil || !lab.Contains(p.Addr()) {
				continue
			}
			b := p.Addr().As4()
			taken[(int(b[2])<<8|int(b[3]))/4] = true
		}
	}
	for slot := range slots {
		if taken[slot] {
			continue
		}
		if _, err := os.Lstat(filepath.Join("/sys/class/net", linkName(slot))); err == nil {
			continue // a link left without its address
		}
		return slot, nil
	}
	return 0, fmt.Errorf("no free /30 in %s", lab)
}

// linkName is the host end of slot's veth pair (at most 12 characters, under
// the kernel's 15).
func linkName(slot int) string { return prefix + strconv.Itoa(slot) }

// accountName is slot's user account.
func accountName(slot int) string { return prefix + strconv.Itoa(slot) }

// reapStale deletes the namespaces of test processes that died before their
// cleanup, with every process in them and their DUT directories, so that
// their slots come free.
func reapStale(ctx context.Context, ip string) error {
	out, err := run(ctx, ip, "netns", "list")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix+"-") {
			continue
		}
		ns := f[0]
		parts := strings.SplitN(ns, "-", 3)
		pid, err := strconv.Atoi(parts[1])
		if err != nil {
			continue // not labtest's
		}
		if _, ours := live.Load(ns); ours || pid != os.Getpid() && alive(pid) {
			continue // its test process still runs
		}
		if err := killNamespace(ctx, ip, ns, 10*time.Second); err != nil {
			return err
		}
		if _, err := run(ctx, ip, "netns", "delete", ns); err != nil {
			return err
		}
		// Its directory, if it is in this process's TMPDIR: ns, a dash and
		// os.MkdirTemp's digits. ns holds no glob metacharacter.
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), ns+"-*"))
		for _, dir := range dirs {
			rest := strings.TrimPrefix(filepath.Base(dir), ns+"-")
			if strings.Trim(rest, "0123456789") != "" {
				continue // another DUT's, whose name starts with this one's
			}
			if err := os.RemoveAll(dir); err != nil {
				return fmt.Errorf("remove stale DUT directory: %w", err)
			}
		}
	}
	return nil
}

// alive reports whether process pid exists and is not a zombie: a killed
// test process may stay one for a while where init is slow to reap.
func alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// hold anything.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// killNamespace kills every process in ns with SIGKILL, again while any
// appears, and returns once none is left (zombies are not listed).
func killNamespace(ctx context.Context, ip, ns string, timeout time.Duration) error {
	return poll(timeout, "kill the processes of namespace "+ns, func() (bool, error) {
		out, err := run(ctx, ip, "netns", "pids", ns)
		if err != nil {
			return false, err
		}
		pids := strings.Fields(string(out))
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL) // it may be gone already
			}
		}
		return len(pids) == 0, nil
	})
}

// account creates slot's user account, or takes it over from an earlier
// DUT, with home as its home directory, /bin/sh as its shell and an
// unlocked password field ("*": no password works, keys do), and returns its
// uid and gid. It kills what is left of the account's processes, which can
// only be an earlier DUT's.
func account(ctx context.Context, tl tools, slot int, home string) (name string, uid, gid int, err error) {
	name = accountName(slot)
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	switch {
	case errors.As(err, &unknown):
		if _, err := run(ctx, tl.useradd, "--system", "--user-group", "--no-create-home",
			"--home-dir", home, "--shell", "/bin/sh", "--comment", accountComment, name); err != nil {
			return "", 0, 0, err
		}
	case err != nil:
		return "", 0, 0, fmt.Errorf("look up user %s: %w", name, err)
	case u.Name != accountComment:
		return "", 0, 0, fmt.Errorf("user %s exists and is not a Kiln lab test account (comment %q)", name, u.Name)
	}
	if _, err := run(ctx, tl.usermod, "--home", home, "--shell", "/bin/sh", "--password", "*", name); err != nil {
		return "", 0, 0, err
	}
	if u, err = user.Lookup(name); err != nil {
		return "", 0, 0, fmt.Errorf("look up user %s: %w", name, err)
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return "", 0, 0, fmt.Errorf("user %s uid %q: %w", name, u.Uid, err)
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return "", 0, 0, fmt.Errorf("user %s gid %q: %w", name, u.Gid, err)
	}
	if err := killUser(uid, 10*time.Second); err != nil {
		return "", 0, 0, err
	}
	return name, uid, gid, nil
}

// proc is one live process read from /proc.
type proc struct {
	pid     int
	cmdline string
}

// userProcs lists the live processes whose real or effective uid is uid,
// by pid. Zombies, which hold nothing but a pid, are left out.
func userProcs(uid int) ([]proc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var procs []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// A process may end between the listing and these reads: skip it.
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil || !statusMatches(status, uid) {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // a zombie, or gone
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		procs = append(procs, proc{pid: pid, cmdline: strings.Join(args, " ")})
	}
	sort.Slice(procs, func(i, j int) bool { return procs[i].pid < procs[j].pid })
	return procs, nil
}

// statusMatches reports whether a /proc/PID/status text belongs to a live
// process whose real or effective uid is uid.
func statusMatches(status []byte, uid int) bool {
	want := strconv.Itoa(uid)
	match := false
	for line := range strings.Lines(string(status)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "State:" && f[1] == "Z":
			return false
		case len(f) >= 3 && f[0] == "Uid:":
			match = f[1] == want || f[2] == want
		}
	}
	return match
}

// killUser kills every process of uid with SIGKILL, again while any
// appears, and returns once none is left.
func killUser(uid int, timeout time.Duration) error {
	return poll(timeout, fmt.Sprintf("kill the processes of uid %d", uid), func() (bool, error) {
		procs, err := userProcs(uid)
		if err != nil {
			return false, err
		}
		for _, p := range procs {
			_ = syscall.Kill(p.pid, syscall.SIGKILL) // it may be gone already
		}
		return len(procs) == 0, nil
	})
}

// poll calls cond every 20 ms until it reports done or fails, and fails
// itself once timeout has passed.
func poll(timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %s", what, timeout)
		}
		<-tick.C
	}
}
