// Package pgtest runs a PostgreSQL server of a test's own, which the test
// may stop and start again: the machine's shared server must not go down
// under other tests.
package pgtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Server is a PostgreSQL server in a temporary directory, on a port of its
// own, with trust authentication on loopback.
type Server struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	// URL is the database URL of its "postgres" database.
	URL string
}

// Start initialises and starts a server; it is stopped and removed when the
// test ends. It skips the test when PostgreSQL's programs are missing,
// unless KILN_REQUIRE_ALL=1.
func Start(t *testing.T) *Server {
	t.Helper()
	bin := binDir()
	if bin == "" {
		if os.Getenv("KILN_REQUIRE_ALL") == "1" {
			t.Fatal("pgtest: no /usr/lib/postgresql/*/bin/initdb (KILN_REQUIRE_ALL=1)")
		}
		t.Skip("pgtest: no /usr/lib/postgresql/*/bin/initdb")
	}
	dir, err := os.MkdirTemp("", "kiln-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: dir, port: freePort(t)}
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	if os.Geteuid() == 0 {
		// initdb refuses root: the cluster belongs to postgres.
		if err := chownToPostgres(dir); err != nil {
			t.Fatal(err)
		}
	}
	s.run("initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "--no-sync")
	t.Cleanup(func() {
		_ = s.ctl("stop", "-m", "immediate")
		_ = os.RemoveAll(dir)
	})
	s.StartAgain()
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// Stop stops the server at once (fast shutdown: connections are cut).
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.ctl("stop", "-m", "fast", "-w"); err != nil {
		s.t.Fatalf("pgtest: stop: %v", err)
	}
}

// StartAgain starts the (stopped) server and waits until it accepts
// connections.
func (s *Server) StartAgain() {
	s.t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", s.port, s.dir)
	if err := s.ctl("start", "-w", "-t", "60", "-o", opts, "-l", filepath.Join(s.dir, "log")); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		s.t.Fatalf("pgtest: start: %v\n%s", err, log)
	}
}

func (s *Server) ctl(args ...string) error {
	cmd := s.command("pg_ctl", append([]string{"-D", s.data()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (s *Server) run(prog string, args ...string) {
	s.t.Helper()
	if out, err := s.command(prog, args...).CombinedOutput(); err != nil {
		s.t.Fatalf("pgtest: %s: %v: %s", prog, err, out)
	}
}

// command runs a PostgreSQL program, as postgres when the test is root.
func (s *Server) command(prog string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, prog)
	if os.Geteuid() == 0 {
		return exec.Command("setpriv", append([]string{"--reuid=postgres", "--regid=postgres", "--init-groups", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

func chownToPostgres(dir string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}

// binDir is the newest installed PostgreSQL's program directory.
func binDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(dirs) == 0 {
		return ""
	}
	sort.Strings(dirs)
	return filepath.Dir(dirs[len(dirs)-1])
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
