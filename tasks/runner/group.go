package runner

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// groupMembers returns the live processes of process group pgid. Zombies do
// not count: they hold no resources but a pid, and an orphaned one waits for
// init (which in a container may never reap it), so counting them would make
// a finished group look alive forever.
func groupMembers(pgid int) []int {
	// Fast path: no process at all, not even a zombie, has this group.
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.pgrp != pgid || st.zombie() {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// procStat is the part of /proc/PID/stat that Run needs.
type procStat struct {
	state byte
	pgrp  int
	// startTime is when the process started, in clock ticks after boot
	// (field 22); 0 when the line was too short to hold it.
	startTime uint64
}

// zombie reports a process that has exited but was not reaped yet ('Z'), or
// is being torn down ('X').
func (s procStat) zombie() bool { return s.state == 'Z' || s.state == 'X' }

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses "pid (comm) state ppid pgrp …". comm may hold spaces and
// parentheses, so the fields start after the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc stat %q: no ')'", b)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc stat %q: too few fields", b)
	}
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat pgrp: %w", err)
	}
	st := procStat{state: f[0][0], pgrp: pgrp}
	// Field 22 (starttime) is the 20th after the comm.
	if len(f) >= 20 {
		if st.startTime, err = strconv.ParseUint(string(f[19]), 10, 64); err != nil {
			return procStat{}, fmt.Errorf("parse /proc stat starttime: %w", err)
		}
	}
	return st, nil
}

// liveOnly drops pids that are gone or zombies.
func liveOnly(pids []int) []int {
	live := pids[:0]
	for _, pid := range pids {
		if st, err := readStat(pid); err == nil && !st.zombie() {
			live = append(live, pid)
		}
	}
	return live
}
