package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/tasks"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker"
)

// abortGrace is the worker's grace period between SIGTERM and SIGKILL in
// the abort scenario; the target is stated with it.
const abortGrace = time.Second

// abortTaskName is the run-command task the abort scenario runs.
const abortTaskName = "bench-sleepers"

// abortTask is a run-command task (tasks.RunProgram: own process group,
// cgroup where possible, grace period, debug logs) whose command starts
// task data "children" sleeps, each with the argument "1000.<marker>" that
// makes them identifiable in /proc, and waits for them. Every process of it
// exits on SIGTERM. Kiln ships no task that runs arbitrary commands, so the
// harness registers this one on its own server and worker.
type abortTask struct{ tasks.Noop }

type abortTaskData struct {
	Children int    `json:"children"`
	Marker   string `json:"marker"`
}

const abortTaskSchema = `{"type": "object", "required": ["children", "marker"], "additionalProperties": false,
  "properties": {"children": {"type": "integer", "minimum": 1, "maximum": 10000},
    "marker": {"type": "string", "pattern": "^[0-9]{1,24}$"}}}`

// The script gets the count and the sleep argument as $1 and $2.
const abortScript = `i=0; while [ "$i" -lt "$1" ]; do sleep "$2" & i=$((i+1)); done; wait`

func (abortTask) Name() string { return abortTaskName }

func (abortTask) Requirements(json.RawMessage) (tasks.Requirements, error) {
	return tasks.Requirements{}, nil
}

func (t abortTask) CanRunOn(req tasks.Requirements, md schemas.Metadata) error {
	return tasks.BaseCanRunOn(t, req, md)
}

func (abortTask) Execute(ctx context.Context, data json.RawMessage, env tasks.Env) (schemas.Result, error) {
	var d abortTaskData
	if err := json.Unmarshal(data, &d); err != nil {
		return schemas.ResultError, fmt.Errorf("%s task data: %w", abortTaskName, err)
	}
	return tasks.RunProgram(ctx, env, abortProgram(d))
}

type abortProgram abortTaskData

func (abortProgram) FetchInput(context.Context, tasks.Env, string) ([]int64, error) { return nil, nil }
func (abortProgram) Configure(context.Context, tasks.Env, string) error             { return nil }
func (p abortProgram) CommandLine(tasks.Env, string, string) ([]string, error) {
	return []string{"sh", "-c", abortScript, "sh", strconv.Itoa(p.Children), abortSleepArg(p.Marker)}, nil
}
func (abortProgram) CheckOutput(tasks.Env, string) []string                { return nil }
func (abortProgram) Upload(context.Context, tasks.Env, string, bool) error { return nil }
func (abortProgram) Succeeded(code int, _ string) bool                     { return code == 0 }

func abortSleepArg(marker string) string { return "1000." + marker }

// abortRegistry is tasks.Default() with abortTask.
func abortRegistry() (*tasks.Registry, error) {
	reg := tasks.Default()
	if err := reg.RegisterWithSchema(abortTask{}, []byte(abortTaskSchema)); err != nil {
		return nil, err
	}
	return reg, nil
}

// runAbort measures, AbortRuns times, the time from the abort API call to
// the moment when every process of a run of AbortChildren children is gone
// (as /proc shows it), on a real in-process worker.
func runAbort(ctx context.Context, e *Env) ([]Row, error) {
	reg, err := abortRegistry()
	if err != nil {
		return nil, err
	}
	k, err := e.StartServer(ctx, func(c *server.Config) { c.Registry = reg })
	if err != nil {
		return nil, err
	}
	if _, err := k.StartWorkers(ctx, 1, 1, func(c *worker.Config) {
		c.Registry = reg
		c.Grace = abortGrace
	}); err != nil {
		return nil, err
	}
	cl := k.Client()
	n := e.Scale.AbortChildren
	var times, calls, firsts []time.Duration
	var procs int
	for i := range e.Scale.AbortRuns {
		marker := fmt.Sprintf("%d%02d", time.Now().UnixNano(), i%100)
		data, _ := json.Marshal(abortTaskData{Children: n, Marker: marker})
		wr, err := cl.CreateWorkRequest(ctx, schemas.WorkRequestCreate{TaskName: abortTaskName, TaskData: data})
		if err != nil {
			return nil, err
		}
		run, err := abortWaitChildren(ctx, abortSleepArg(marker), n, 60*time.Second)
		if err != nil {
			return nil, fmt.Errorf("run %d (work request %d): %w", i+1, wr.ID, err)
		}
		procs = len(run)
		start := time.Now()
		if _, err := cl.AbortWorkRequest(ctx, wr.ID); err != nil {
			return nil, err
		}
		calls = append(calls, time.Since(start))
		first, last, err := abortWaitGone(ctx, run, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("run %d (work request %d): %w", i+1, wr.ID, err)
		}
		times = append(times, last.Sub(start))
		firsts = append(firsts, first.Sub(start))
		e.Log.Debug().Int64("work_request", wr.ID).Dur("took", last.Sub(start)).Msg("aborted")
		// The next run starts once the worker has confirmed this one's kill.
		if err := abortWaitConfirmed(ctx, k, wr.ID, 30*time.Second); err != nil {
			return nil, err
		}
	}
	if len(times) == 0 {
		return nil, errors.New("no abort runs (Scale.AbortRuns is 0)")
	}
	slices.Sort(times)
	slices.Sort(calls)
	slices.Sort(firsts)
	p50, p99 := abortPercentile(times, 0.50), abortPercentile(times, 0.99)
	limit := time.Second + abortGrace
	cg := "no (process group only)"
	if ok, _ := runner.CgroupSupport(""); ok {
		cg = "yes"
	}
	note := fmt.Sprintf("%d runs of %d sleep children (%d processes with the shell); run-command task on an in-process worker; own cgroup: %s; "+
		"p50 of the API call %.1f ms, of the first process gone %.1f ms; max %.1f ms",
		len(times), n, procs, cg, abortMs(abortPercentile(calls, 0.5)), abortMs(abortPercentile(firsts, 0.5)), abortMs(times[len(times)-1]))
	return []Row{
		{Metric: fmt.Sprintf("abort → all %d processes gone, p50", procs), Value: abortMs(p50), Unit: "ms", Note: note},
		{Metric: fmt.Sprintf("abort → all %d processes gone, p99", procs), Value: abortMs(p99), Unit: "ms",
			Target: fmt.Sprintf("< 1 s + grace (%s) = %s", abortGrace, limit), Met: Met(p99 < limit)},
	}, nil
}

func abortMs(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// abortPercentile is the nearest-rank percentile of sorted durations.
func abortPercentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// abortProc is a process seen in /proc: its pid and start time (which tells
// a reused pid from it).
type abortProc struct {
	pid   int
	start string
}

// abortStat reads /proc/PID/stat: state, process group and start time.
func abortStat(pid int) (state byte, pgid int, start string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, "", err
	}
	// The command name, in parentheses, may hold spaces: fields start
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, "", fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22 (starttime).
	if len(f) < 20 {
		return 0, 0, "", fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	pgid, _ = strconv.Atoi(f[2])
	return f[0][0], pgid, f[19], nil
}

// abortAlive says whether a process runs: zombies (and dead ones) run
// nothing, and a pid with another start time is another process.
func abortAlive(p abortProc) bool {
	state, _, start, err := abortStat(p.pid)
	return err == nil && state != 'Z' && state != 'X' && start == p.start
}

// abortPids lists the pids in /proc.
func abortPids() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(ents))
	for _, ent := range ents {
		if pid, err := strconv.Atoi(ent.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// abortWaitChildren waits until n live processes run `sleep arg`, and
// returns every live process of their process group (the run's): the
// sleeps and the shell.
func abortWaitChildren(ctx context.Context, arg string, n int, timeout time.Duration) ([]abortProc, error) {
	want := []byte("\x00" + arg + "\x00")
	deadline := time.Now().Add(timeout)
	found := 0
	for {
		pids, err := abortPids()
		if err != nil {
			return nil, err
		}
		pgids := map[int]bool{}
		found = 0
		for _, pid := range pids {
			cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if err != nil || !bytes.HasPrefix(cmdline, []byte("sleep\x00")) || !bytes.HasSuffix(cmdline, want) {
				continue
			}
			state, pgid, _, err := abortStat(pid)
			if err != nil || state == 'Z' {
				continue
			}
			found++
			pgids[pgid] = true
		}
		if found >= n {
			var run []abortProc
			for _, pid := range pids {
				state, pgid, start, err := abortStat(pid)
				if err == nil && pgids[pgid] && state != 'Z' {
					run = append(run, abortProc{pid: pid, start: start})
				}
			}
			return run, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d children running after %s", found, n, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// abortWaitGone polls the processes every millisecond until none is alive
// and returns when the first and the last one were seen gone.
func abortWaitGone(ctx context.Context, procs []abortProc, timeout time.Duration) (first, last time.Time, err error) {
	deadline := time.Now().Add(timeout)
	left := slices.Clone(procs)
	for {
		left = slices.DeleteFunc(left, func(p abortProc) bool { return !abortAlive(p) })
		now := time.Now()
		if first.IsZero() && len(left) < len(procs) {
			first = now
		}
		if len(left) == 0 {
			return first, now, nil
		}
		if now.After(deadline) {
			return first, last, fmt.Errorf("%d of %d processes still alive %s after the abort", len(left), len(procs), timeout)
		}
		if ctx.Err() != nil {
			return first, last, ctx.Err()
		}
		time.Sleep(time.Millisecond)
	}
}

// abortWaitConfirmed waits until the worker has confirmed that nothing of
// aborted request id runs any more.
func abortWaitConfirmed(ctx context.Context, k *Kiln, id int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		wr, err := k.Client().GetWorkRequest(ctx, id)
		if err != nil {
			return err
		}
		if !wr.KillPending {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("work request %d: the worker did not confirm the kill within %s", id, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
