package runner

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CgroupMode says whether runs get their own cgroup v2.
type CgroupMode int

const (
	// CgroupAuto gives each run its own cgroup where the worker can create
	// one, and falls back to the process group alone elsewhere.
	CgroupAuto CgroupMode = iota
	// CgroupOff never uses cgroups.
	CgroupOff
	// CgroupRequire makes Run fail to start a command without its own
	// cgroup.
	CgroupRequire
)

var cgroupModeNames = [...]string{CgroupAuto: "auto", CgroupOff: "off", CgroupRequire: "require"}

// String returns "auto", "off" or "require".
func (m CgroupMode) String() string {
	if m >= 0 && int(m) < len(cgroupModeNames) {
		return cgroupModeNames[m]
	}
	return "CgroupMode(" + strconv.Itoa(int(m)) + ")"
}

// MarshalText returns the String form, for configuration files.
func (m CgroupMode) MarshalText() ([]byte, error) {
	if m < 0 || int(m) >= len(cgroupModeNames) {
		return nil, fmt.Errorf("invalid cgroup mode %d", int(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText parses "auto", "off" or "require", so that the mode can be a
// flag, an environment variable or a config-file key.
func (m *CgroupMode) UnmarshalText(b []byte) error {
	for i, name := range cgroupModeNames {
		if string(b) == name {
			*m = CgroupMode(i)
			return nil
		}
	}
	return fmt.Errorf("invalid cgroup mode %q: want auto, off or require", b)
}

// cgroup2SuperMagic is CGROUP2_SUPER_MAGIC from linux/magic.h, the f_type
// statfs reports for a cgroup v2 file system.
const cgroup2SuperMagic = 0x63677270

// CgroupSupport reports whether Run can give each command its own cgroup v2
// under parent ("" means the default, as Options.CgroupParent), and why or
// why not, for the worker's metadata and start-up log. It creates and
// removes one empty cgroup to find out, and creates parent if missing.
func CgroupSupport(parent string) (ok bool, reason string) {
	cg, err := newRunCgroup(parent)
	if err != nil {
		return false, err.Error() + "; runs are contained by their process group only"
	}
	cg.closeFD()
	where := filepath.Dir(cg.dir)
	if err := cg.remove(killTimeout); err != nil {
		return false, err.Error()
	}
	if !cg.hasKill {
		return true, "cgroup v2 under " + where + " without cgroup.kill (Linux < 5.14): leftovers are killed pid by pid"
	}
	return true, "cgroup v2 under " + where + " with cgroup.kill"
}

// runCgroup is the cgroup of one run.
type runCgroup struct {
	dir     string
	fd      *os.File // the directory, open for CLONE_INTO_CGROUP until start
	hasKill bool     // cgroup.kill exists (Linux >= 5.14)
}

// newRunCgroup creates a fresh cgroup under parent, creating parent itself
// if it is missing and its own parent is a cgroup v2 directory.
func newRunCgroup(parent string) (*runCgroup, error) {
	if parent == "" {
		var err error
		if parent, err = defaultCgroupParent(); err != nil {
			return nil, err
		}
	}
	if err := ensureCgroupDir(parent); err != nil {
		return nil, err
	}
	// A random name: runs of several workers, or of a worker restarted after
	// a crash that left a cgroup behind, must not collide.
	dir, err := os.MkdirTemp(parent, "run-")
	if err != nil {
		return nil, fmt.Errorf("cgroup v2: create run cgroup: %w", err)
	}
	cg := &runCgroup{dir: dir}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err == nil {
		cg.hasKill = true
	}
	if cg.fd, err = os.Open(dir); err != nil {
		_ = syscall.Rmdir(dir)
		return nil, fmt.Errorf("cgroup v2: open run cgroup: %w", err)
	}
	return cg, nil
}

// ensureCgroupDir checks that dir is a cgroup v2 directory, creating it when
// it is missing and its parent is one.
func ensureCgroupDir(dir string) error {
	err := isCgroup2(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := isCgroup2(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cgroup v2: create %s: %w", dir, err)
	}
	return nil
}

func isCgroup2(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("cgroup v2: %s: %w", dir, &fs.PathError{Op: "statfs", Path: dir, Err: err})
	}
	if int64(st.Type) != cgroup2SuperMagic {
		return fmt.Errorf("cgroup v2: %s is not on a cgroup2 file system", dir)
	}
	return nil
}

func (c *runCgroup) closeFD() {
	if c.fd != nil {
		_ = c.fd.Close()
		c.fd = nil
	}
}

// procs returns the live processes in the cgroup.
func (c *runCgroup) procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("cgroup v2: %w", err)
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}
	return liveOnly(pids), nil
}

// kill SIGKILLs every process in the cgroup, including those that left the
// process group, and returns once none is left (or after killTimeout).
func (c *runCgroup) kill() error {
	if c.hasKill {
		if err := writeCgroupFile(c.dir, "cgroup.kill", "1"); err == nil {
			return c.waitEmpty(killTimeout)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return c.killEach(killTimeout)
}

// killEach is the fallback without cgroup.kill: SIGKILL every pid listed in
// cgroup.procs until the list is empty. Freezing the cgroup first (Linux
// >= 5.2) keeps a forking process from outrunning the loop; SIGKILL still
// reaches frozen processes. A pid that exits between the read and the kill
// could in theory be reused outside the cgroup: cgroup.kill has no such race,
// which is why it is preferred.
func (c *runCgroup) killEach(timeout time.Duration) error {
	frozen := writeCgroupFile(c.dir, "cgroup.freeze", "1") == nil
	var lastErr error
	empty := pollUntil(time.Now().Add(timeout), func() bool {
		pids, err := c.procs()
		if err != nil {
			lastErr = err
			return false
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(pids) == 0
	})
	if frozen {
		_ = writeCgroupFile(c.dir, "cgroup.freeze", "0")
	}
	if !empty {
		return fmt.Errorf("cgroup v2: %s still has processes after %s (last error: %v)", c.dir, timeout, lastErr)
	}
	return nil
}

// waitEmpty waits until no live process is left in the cgroup.
func (c *runCgroup) waitEmpty(timeout time.Duration) error {
	var lastErr error
	if pollUntil(time.Now().Add(timeout), func() bool {
		pids, err := c.procs()
		lastErr = err
		return err == nil && len(pids) == 0
	}) {
		return nil
	}
	return fmt.Errorf("cgroup v2: %s still has processes after %s (last error: %v)", c.dir, timeout, lastErr)
}

// remove deletes the cgroup directory, retrying while exiting processes
// still keep it busy.
func (c *runCgroup) remove(timeout time.Duration) error {
	var err error
	pollUntil(time.Now().Add(timeout), func() bool {
		err = syscall.Rmdir(c.dir)
		return !errors.Is(err, syscall.EBUSY)
	})
	if err == nil || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return fmt.Errorf("cgroup v2: remove %s: %w", c.dir, err)
}

func writeCgroupFile(dir, name, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cgroup v2: write %s to %s: %w", value, f.Name(), err)
	}
	return nil
}

// defaultCgroupParent is "kiln" under this process's own cgroup v2
// directory. Below its own cgroup is where a worker is allowed to create
// cgroups: under systemd that needs Delegate=yes on the unit.
// DefaultCgroupParent is the cgroup v2 directory under which runs get their
// cgroups when Options.CgroupParent is empty: "kiln" below this process's
// own cgroup.
func DefaultCgroupParent() (string, error) { return defaultCgroupParent() }

func defaultCgroupParent() (string, error) {
	own, err := readFileWith("/proc/self/cgroup", parseOwnCgroup)
	if err != nil {
		return "", err
	}
	mounts, err := readFileWith("/proc/self/mountinfo", parseCgroup2Mounts)
	if err != nil {
		return "", err
	}
	dir, err := cgroupPath(mounts, own)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "kiln"), nil
}

func readFileWith[T any](path string, parse func(io.Reader) (T, error)) (T, error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("cgroup v2: %w", err)
	}
	defer f.Close()
	v, err := parse(f)
	if err != nil {
		return v, fmt.Errorf("cgroup v2: %s: %w", path, err)
	}
	return v, nil
}

// parseOwnCgroup returns the cgroup v2 path from /proc/self/cgroup: the
// "0::/path" line, present on unified and hybrid hosts.
func parseOwnCgroup(r io.Reader) (string, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if path, ok := strings.CutPrefix(s.Text(), "0::"); ok {
			if !strings.HasPrefix(path, "/") || strings.Contains(path, "/..") {
				// Outside our cgroup namespace's root: no usable path.
				return "", fmt.Errorf("own cgroup %q is not below the namespace root", path)
			}
			return path, nil
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 hierarchy (no 0:: line)")
}

// cgroupMount is one cgroup2 mount: the cgroup path mounted (root) and where.
type cgroupMount struct {
	root, point string
}

// parseCgroup2Mounts returns the cgroup2 mounts listed in mountinfo, whose
// lines read "id parent maj:min root mountpoint options [optional…] -
// fstype source superoptions".
func parseCgroup2Mounts(r io.Reader) ([]cgroupMount, error) {
	var mounts []cgroupMount
	s := bufio.NewScanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) || f[sep+1] != "cgroup2" {
			continue
		}
		mounts = append(mounts, cgroupMount{root: unescapeMount(f[3]), point: unescapeMount(f[4])})
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if len(mounts) == 0 {
		return nil, errors.New("no cgroup2 mount")
	}
	return mounts, nil
}

// unescapeMount undoes the octal escapes (\040 for a space) that mountinfo
// uses for white space and backslashes in paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupPath maps the cgroup path own to a directory through the first
// mount that shows it.
func cgroupPath(mounts []cgroupMount, own string) (string, error) {
	for _, m := range mounts {
		if m.root == "/" {
			return filepath.Join(m.point, own), nil
		}
		if rel, ok := strings.CutPrefix(own, m.root); ok && (rel == "" || strings.HasPrefix(rel, "/")) {
			return filepath.Join(m.point, rel), nil
		}
	}
	return "", fmt.Errorf("cgroup v2: own cgroup %s is not visible under any cgroup2 mount", own)
}
