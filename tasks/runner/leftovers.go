package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process identifies a started command's process group and cgroup for a
// later life of the worker, which kills what is left of it with
// KillLeftovers when the worker died before the command ended. Its JSON
// form is stored in the worker's journal.
type Process struct {
	// PGID is the main process's pid, which is also its process group
	// and session id.
	PGID int `json:"pgid"`
	// StartTime is when the main process started, in clock ticks after
	// boot (/proc/PID/stat field 22): a pid reused by another process has
	// another start time.
	StartTime uint64 `json:"start_time"`
	// BootID is the kernel's boot id (/proc/sys/kernel/random/boot_id):
	// after a reboot nothing of the run can be left and start times
	// start again.
	BootID string `json:"boot_id,omitempty"`
	// Cgroup is the run's own cgroup v2 directory, empty without one.
	Cgroup string `json:"cgroup,omitempty"`
}

// newProcess describes a command that has started and was not reaped yet.
func newProcess(pgid int, cg *runCgroup) Process {
	p := Process{PGID: pgid, BootID: bootID()}
	if st, err := readStat(pgid); err == nil {
		p.StartTime = st.startTime
	}
	if cg != nil {
		p.Cgroup = cg.dir
	}
	return p
}

var bootIDOnce struct {
	sync.Once
	id string
}

func bootID() string {
	bootIDOnce.Do(func() {
		if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
			bootIDOnce.id = strings.TrimSpace(string(b))
		}
	})
	return bootIDOnce.id
}

// KillLeftovers SIGKILLs what is left of a command that an earlier life of
// the worker started, and removes its cgroup; it returns how many processes
// it killed. The process group is only signalled while its leader still
// runs with the recorded start time, so that a reused pid is never
// signalled; a run cgroup (a directory named run-* on a cgroup2 file
// system, made by Run) is killed whole, which also reaches the processes
// that left the group. After a reboot (another boot id) nothing is left
// and nothing is done. The error says what could not be killed or removed.
func KillLeftovers(p Process) (int, error) {
	if p.BootID != "" && bootID() != "" && p.BootID != bootID() {
		return 0, nil
	}
	var errs []error
	killed := map[int]bool{}
	leaderGone := false
	if p.PGID > 1 {
		st, err := readStat(p.PGID)
		switch {
		case err != nil:
			leaderGone = true
		case p.StartTime != 0 && st.startTime == p.StartTime && st.pgrp == p.PGID:
			for _, pid := range groupMembers(p.PGID) {
				killed[pid] = true
			}
			if err := syscall.Kill(-p.PGID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("kill process group %d: %w", p.PGID, err))
			}
			if !pollUntil(time.Now().Add(killTimeout), func() bool { return len(groupMembers(p.PGID)) == 0 }) {
				errs = append(errs, fmt.Errorf("process group %d still has processes %v after SIGKILL", p.PGID, groupMembers(p.PGID)))
			}
		default:
			// The pid now belongs to another process: not ours.
		}
	}
	if p.Cgroup != "" {
		n, err := killRunCgroup(p.Cgroup)
		for _, pid := range n {
			killed[pid] = true
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if leaderGone {
		// Without its leader the group cannot be told from one that a
		// reused pid leads now; only the cgroup (above) reaches it.
		if left := groupMembers(p.PGID); len(left) > 0 {
			errs = append(errs, fmt.Errorf("process group %d outlived its leader: its processes %v cannot be told from those of a reused pid and were left alone", p.PGID, left))
		}
	}
	return len(killed), errors.Join(errs...)
}

// killRunCgroup kills every process in a run cgroup that an earlier life of
// the worker left, and removes it; it returns the pids it found.
func killRunCgroup(dir string) ([]int, error) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || !strings.HasPrefix(filepath.Base(dir), "run-") {
		return nil, fmt.Errorf("cgroup v2: %q is not a run cgroup; left alone", dir)
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err := isCgroup2(dir); err != nil {
		return nil, fmt.Errorf("%w; left alone", err)
	}
	cg := &runCgroup{dir: dir}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err == nil {
		cg.hasKill = true
	}
	pids, err := cg.procs()
	if err != nil {
		return nil, err
	}
	if len(pids) > 0 {
		if err := cg.kill(); err != nil {
			return pids, err
		}
	}
	return pids, cg.remove(killTimeout)
}
