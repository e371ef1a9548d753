package tasks

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KeyUnshareAvailable is debusine's metadata key saying that the worker can
// run builds in unshare mode (user namespaces with a subordinate id range).
const KeyUnshareAvailable = "executor:unshare:available"

// buildUser is the account that builds and checks run as.
type buildUser struct {
	name     string
	uid, gid int
	home     string
	// drop says that commands must switch to this user (the worker is
	// root); otherwise they run as the worker itself.
	drop bool
	// dir, when set, is the working directory of its commands: a run's
	// own directories are the worker's, closed to the build user.
	dir string
}

// in returns u with commands that run in dir.
func (u buildUser) in(dir string) buildUser {
	u.dir = dir
	return u
}

// errRootBuild explains why a root worker without a build user builds
// nothing: sbuild refuses root without a subuid range, and a package's
// build must never run as root on the worker's machine.
var errRootBuild = errors.New("the worker runs as root and has no build user: set --build-user to an unprivileged user with a subordinate uid/gid range (see docs/admin.md)")

// lookupBuildUser returns the user that commands of host run as.
func lookupBuildUser(host Host) (buildUser, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return buildUser{}, fmt.Errorf("current user: %w", err)
		}
		return toBuildUser(u, false)
	}
	if host.BuildUser == "" {
		return buildUser{}, errRootBuild
	}
	u, err := user.Lookup(host.BuildUser)
	if err != nil {
		return buildUser{}, fmt.Errorf("build user: %w", err)
	}
	bu, err := toBuildUser(u, true)
	if err == nil && bu.uid == 0 {
		return buildUser{}, fmt.Errorf("build user %s is root: %w", host.BuildUser, errRootBuild)
	}
	return bu, err
}

func toBuildUser(u *user.User, drop bool) (buildUser, error) {
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return buildUser{}, fmt.Errorf("user %s: uid %q", u.Username, u.Uid)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return buildUser{}, fmt.Errorf("user %s: gid %q", u.Username, u.Gid)
	}
	return buildUser{name: u.Username, uid: uid, gid: gid, home: u.HomeDir, drop: drop}, nil
}

// command returns argv run as the build user with exactly the environment
// vars (NAME=value) besides the login basics: setpriv, not runuser or su,
// because runuser SIGKILLs its child two seconds after SIGTERM, which would
// cut short the clean-up of a build being aborted.
func (u buildUser) command(argv []string, vars ...string) []string {
	out := []string{}
	if u.drop {
		out = append(out, "setpriv", "--reuid="+strconv.Itoa(u.uid), "--regid="+strconv.Itoa(u.gid), "--init-groups", "--reset-env")
	}
	out = append(out, "env")
	if u.dir != "" {
		out = append(out, "--chdir="+u.dir)
	}
	out = append(out, "HOME="+u.home, "USER="+u.name, "LOGNAME="+u.name)
	if !u.drop {
		out = append(out, "PATH="+os.Getenv("PATH"))
	}
	out = append(out, vars...)
	return append(out, argv...)
}

// inPIDNamespace makes cmd the init of a PID namespace of its own when the
// worker may (as root): sbuild and mmdebstrap put their work in namespaces that a
// signal to the command's process group does not reach, but the death of a
// namespace's init takes everything in it down.
func inPIDNamespace(cmd []string) []string {
	if os.Geteuid() != 0 {
		return cmd
	}
	return append([]string{"unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc"}, cmd...)
}

// chown gives path to the build user when commands switch to it.
func (u buildUser) chown(paths ...string) error {
	if !u.drop {
		return nil
	}
	for _, p := range paths {
		if err := os.Lchown(p, u.uid, u.gid); err != nil {
			return fmt.Errorf("give %s to the build user: %w", p, err)
		}
	}
	return nil
}

// hasSubIDs reports whether /etc/subuid and /etc/subgid give the user a
// range, which unshare builds need to map the build environment's users.
func (u buildUser) hasSubIDs() error {
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		ok, err := subIDRange(f, u.name, u.uid)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s has no range for user %s", f, u.name)
		}
	}
	return nil
}

func subIDRange(path, name string, uid int) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Split(strings.TrimSpace(s.Text()), ":")
		if len(fields) == 3 && (fields[0] == name || fields[0] == strconv.Itoa(uid)) {
			if n, err := strconv.Atoi(fields[2]); err == nil && n >= 65536 {
				return true, nil
			}
		}
	}
	return false, s.Err()
}

// unshareProbeTimeout bounds the user-namespace probe of AnalyzeWorker.
const unshareProbeTimeout = 10 * time.Second

// unshareAvailable checks, by creating one, that the build user can make a
// user namespace with its subordinate ids mapped, as sbuild's and
// mmdebstrap's unshare modes do.
func unshareAvailable(ctx context.Context, host Host) error {
	u, err := lookupBuildUser(host)
	if err != nil {
		return err
	}
	for _, prog := range []string{"unshare", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("%s is not installed (packages util-linux, uidmap)", prog)
		}
	}
	if u.drop {
		if _, err := exec.LookPath("setpriv"); err != nil {
			return errors.New("setpriv is not installed (package util-linux)")
		}
	}
	if err := u.hasSubIDs(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, unshareProbeTimeout)
	defer cancel()
	argv := u.command([]string{"unshare", "--map-auto", "--map-root-user", "true"})
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// scratchDir creates the scratch directory of one run, owned by the build
// user; what an earlier life of the worker left there is removed first.
func scratchDir(host Host, env Env, u buildUser) (string, error) {
	base := host.ScratchDir
	if base == "" {
		base = os.TempDir()
	}
	// Two worker daemons on one machine may share the scratch directory:
	// the run's own work directory tells their runs apart.
	tag := sha256.Sum256([]byte(env.WorkDir))
	dir := filepath.Join(base, fmt.Sprintf("kiln-run-%d-%d-%x", env.WorkRequestID, env.Attempt, tag[:4]))
	if err := removeTree(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	if err := u.chown(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// removeTree removes dir and everything below it. An unpacked build
// environment holds files owned by the build user's subordinate ids, which
// only root or that user's own user namespace may delete.
func removeTree(dir string) error {
	err := os.RemoveAll(dir)
	if err == nil || os.Geteuid() == 0 {
		return err
	}
	out, uerr := exec.Command("unshare", "--map-auto", "--map-root-user", "rm", "-rf", "--one-file-system", dir).CombinedOutput()
	if uerr != nil {
		return fmt.Errorf("remove %s: %w (in a user namespace: %v: %s)", dir, err, uerr, strings.TrimSpace(string(out)))
	}
	return nil
}

// copyFile copies src to dst (mode 0644). src must be a regular file, not
// a symbolic link: files in a build user's directory are the build user's
// to replace, and the worker must not be made to read something of its own.
func copyFile(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// regularFiles checks that the local files of an artifact to upload are
// regular files, for the same reason.
func regularFiles(files map[string]string) error {
	for _, path := range files {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
	}
	return nil
}

// commandAvailable reports whether prog is in PATH.
func commandAvailable(prog string) bool {
	_, err := exec.LookPath(prog)
	return err == nil
}
