// Package journal is the worker's small on-disk record of what it runs:
// one JSON file per run (work request and attempt), written atomically
// (temporary file, fsync, rename, fsync of the directory), holding the
// process groups and cgroups of the commands the run started and, once the
// run has ended, the completion report not yet accepted by the server.
// A worker's next life reads it to kill what the previous one left and to
// send what it could not. It decides nothing about runs and talks to no
// server; one worker holds a journal directory at a time (a lock file).
package journal

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
)

// ErrLocked is returned by Open when another process holds the journal.
var ErrLocked = errors.New("journal in use by another process")

// ErrCorrupt wraps the errors about files that could not be read as
// entries; Entries moves such files aside (suffix .corrupt).
var ErrCorrupt = errors.New("corrupt journal entry")

// Entry is the record of one run.
type Entry struct {
	// WorkRequest and Attempt identify the run; the file is named after
	// them ("ID-ATTEMPT.json").
	WorkRequest int64 `json:"work_request"`
	Attempt     int   `json:"attempt"`
	// Task is the task's name, for the logs.
	Task string `json:"task,omitempty"`
	// Started is when the worker took the run.
	Started time.Time `json:"started"`
	// Processes are the commands the run started, in order.
	Processes []runner.Process `json:"processes,omitempty"`
	// Aborted is set when the run was aborted through the API and
	// everything it started is gone: only the kill confirmation is due.
	Aborted bool `json:"aborted,omitempty"`
	// Result is the completion report of a run that ended, until the
	// server has accepted (or refused for good) it.
	Result *schemas.WorkRequestCompleted `json:"result,omitempty"`
}

func (e Entry) name() string { return fmt.Sprintf("%d-%d.json", e.WorkRequest, e.Attempt) }

// fileRE matches an entry's file name: request id and attempt.
var fileRE = regexp.MustCompile(`^([0-9]+)-([0-9]+)\.json$`)

const (
	lockName  = "lock"
	tmpSuffix = ".tmp"
)

// Journal is a journal directory, held by this process until Close.
type Journal struct {
	dir  string
	lock *os.File
	// stripes serialise the writes of one entry, which share a temporary
	// file; the writes of different runs go on side by side, each with
	// its two fsyncs, instead of queueing behind one lock (kiln-bench).
	// A directory's fsync makes every rename done before it durable, so
	// each write's own covers its rename whatever the others do.
	stripes [16]sync.Mutex
}

// Open opens (creating it, mode 0700) the journal in dir and takes its
// lock, so that two workers never share one: ErrLocked when another
// process holds it. Temporary files of writes that a crash interrupted
// are removed; the entries they would have replaced are intact.
func Open(dir string) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("journal %s: lock: %w", dir, err)
	}
	j := &Journal{dir: dir, lock: lock}
	names, err := j.names()
	if err != nil {
		j.Close()
		return nil, err
	}
	for _, name := range names {
		if filepath.Ext(name) == tmpSuffix {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
	return j, nil
}

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.dir }

// Close releases the journal's lock.
func (j *Journal) Close() error { return j.lock.Close() }

func (j *Journal) names() ([]string, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Write stores e, replacing the entry of the same run: once it returns,
// e survives a crash of the worker or the machine, and a crash during
// Write leaves the previous version.
func (j *Journal) Write(e Entry) error {
	if e.WorkRequest <= 0 || e.Attempt < 0 {
		return fmt.Errorf("journal: invalid entry for work request %d attempt %d", e.WorkRequest, e.Attempt)
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	b = append(b, '\n')
	mu := &j.stripes[uint64(e.WorkRequest)%uint64(len(j.stripes))]
	mu.Lock()
	defer mu.Unlock()
	path := filepath.Join(j.dir, e.name())
	tmp := path + tmpSuffix
	if err := writeSync(tmp, b); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("journal: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Remove deletes the entry of a run; a missing entry is not an error. The
// removal is not synced: should a crash undo it, the next life sends the
// entry's report or abandon again, and the server refuses it as done.
func (j *Journal) Remove(workRequest int64, attempt int) error {
	err := os.Remove(filepath.Join(j.dir, Entry{WorkRequest: workRequest, Attempt: attempt}.name()))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// Entries returns the entries, ordered by work request and attempt. A file
// that is not a valid entry is renamed with the suffix .corrupt (kept for
// an admin to look at, never read again) and reported in the error, which
// wraps ErrCorrupt; the other entries are still returned.
func (j *Journal) Entries() ([]Entry, error) {
	names, err := j.names()
	if err != nil {
		return nil, err
	}
	var out []Entry
	var errs []error
	for _, name := range names {
		m := fileRE.FindStringSubmatch(name)
		if m == nil {
			continue // the lock, temporary files, .corrupt files
		}
		path := filepath.Join(j.dir, name)
		e, err := readEntry(path)
		if err == nil {
			id, _ := strconv.ParseInt(m[1], 10, 64)
			attempt, _ := strconv.Atoi(m[2])
			if e.WorkRequest != id || e.Attempt != attempt {
				err = fmt.Errorf("names work request %d attempt %d", e.WorkRequest, e.Attempt)
			}
		}
		if err != nil {
			aside := path + ".corrupt"
			if rerr := os.Rename(path, aside); rerr != nil {
				errs = append(errs, fmt.Errorf("%w %s: %v (and moving it aside failed: %v)", ErrCorrupt, path, err, rerr))
				continue
			}
			errs = append(errs, fmt.Errorf("%w %s: %v; moved to %s", ErrCorrupt, path, err, aside))
			continue
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.WorkRequest, b.WorkRequest), cmp.Compare(a.Attempt, b.Attempt))
	})
	return out, errors.Join(errs...)
}

func readEntry(path string) (Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Entry{}, err
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return Entry{}, err
	}
	return e, nil
}
