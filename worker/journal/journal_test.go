package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
)

func open(t *testing.T, dir string) *Journal {
	t.Helper()
	j, err := Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestWriteReadRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "journal")
	j := open(t, dir)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())

	started := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	a := Entry{WorkRequest: 12, Attempt: 2, Task: "script", Started: started}
	b := Entry{WorkRequest: 3, Attempt: 1, Task: "noop", Started: started}
	require.NoError(t, j.Write(a))
	require.NoError(t, j.Write(b))
	// The entry of a run is replaced as it grows.
	a.Processes = append(a.Processes, runner.Process{PGID: 4242, StartTime: 99, BootID: "boot", Cgroup: "/sys/fs/cgroup/kiln/run-1"})
	require.NoError(t, j.Write(a))
	a.Result = &schemas.WorkRequestCompleted{Result: schemas.ResultSuccess, Attempt: 2, Output: "done\n"}
	require.NoError(t, j.Write(a))
	st, err = os.Stat(filepath.Join(dir, "12-2.json"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	got, err := j.Entries()
	require.NoError(t, err)
	require.Equal(t, []Entry{b, a}, got, "ordered by work request")

	require.NoError(t, j.Remove(3, 1))
	require.NoError(t, j.Remove(3, 1), "removing twice is fine")
	got, err = j.Entries()
	require.NoError(t, err)
	require.Equal(t, []Entry{a}, got)
	require.Equal(t, []string{"12-2.json", "lock"}, files(t, dir))

	require.Error(t, j.Write(Entry{WorkRequest: 0, Attempt: 1}))
}

func TestOneWorkerPerJournal(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	_, err := Open(dir)
	require.ErrorIs(t, err, ErrLocked)
	require.NoError(t, j.Close())
	// Released on Close (and by the kernel when the process dies).
	open(t, dir)
}

func TestCrashDuringWriteKeepsThePreviousVersion(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	e := Entry{WorkRequest: 7, Attempt: 1, Task: "noop"}
	require.NoError(t, j.Write(e))
	require.NoError(t, j.Close())
	// A crash between writing the temporary file and the rename leaves
	// a partial temporary file next to the intact entry.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "7-1.json.tmp"), []byte(`{"work_request": 7, "att`), 0o600))

	j = open(t, dir)
	got, err := j.Entries()
	require.NoError(t, err)
	require.Equal(t, []Entry{e}, got)
	require.Equal(t, []string{"7-1.json", "lock"}, files(t, dir), "the temporary file is gone")
}

func TestCorruptEntriesAreMovedAside(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	good := Entry{WorkRequest: 5, Attempt: 1}
	require.NoError(t, j.Write(good))
	for name, content := range map[string]string{
		"6-1.json":  `{"work_request": 6, "attempt"`,        // truncated
		"8-1.json":  ``,                                     // empty
		"9-1.json":  `{"work_request": 10, "attempt": 1}`,   // names another run
		"11-1.json": `{"work_request": "11", "attempt": 1}`, // wrong type
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	// Other files are not entries and are left alone.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README"), []byte("hi"), 0o600))

	got, err := j.Entries()
	require.ErrorIs(t, err, ErrCorrupt)
	for _, name := range []string{"6-1.json", "8-1.json", "9-1.json", "11-1.json"} {
		require.ErrorContains(t, err, name)
	}
	require.Equal(t, []Entry{good}, got)
	require.Equal(t, []string{"11-1.json.corrupt", "5-1.json", "6-1.json.corrupt", "8-1.json.corrupt", "9-1.json.corrupt", "README", "lock"}, files(t, dir))

	// Read again: only the good entry, and no more complaints.
	got, err = j.Entries()
	require.NoError(t, err)
	require.Equal(t, []Entry{good}, got)
}

func TestConcurrentWrites(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := Entry{WorkRequest: int64(i + 1), Attempt: 1}
			for k := range 10 {
				e.Processes = append(e.Processes, runner.Process{PGID: 100 + k})
				if err := j.Write(e); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	// Two writers of one entry share its temporary file: they take turns.
	for range 2 {
		wg.Go(func() {
			for k := range 20 {
				e := Entry{WorkRequest: 1, Attempt: 2, Task: fmt.Sprint(k)}
				if err := j.Write(e); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, err := j.Entries()
	require.NoError(t, err)
	require.Len(t, got, 9)
	for _, e := range got {
		if e.Attempt == 2 {
			require.Equal(t, "19", e.Task)
			continue
		}
		require.Len(t, e.Processes, 10)
	}
	names, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, n := range names {
		require.NotEqual(t, tmpSuffix, filepath.Ext(n.Name()), "temporary file left")
	}
}
