// Package runner runs one command for a task so that stopping it stops
// everything it started: the program runs in its own session (and so its own
// process group), and, where the worker may create a cgroup v2, in its own
// cgroup that is killed as a whole.
//
// Run owns the life of the command from start to the end of the finalize
// step: signals, grace periods, leftover processes, the output pipe and the
// per-run cgroup. Options.OnStart tells the caller what identifies a started
// command, and KillLeftovers kills what a command left when the worker that
// ran it died. It must not decide what a run means (success, failure,
// aborted) or where output is stored; callers do that with the Result and the
// io.Writer they pass in.
package runner
