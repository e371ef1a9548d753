package bench

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	_ "modernc.org/sqlite" // for sqlite_version()
)

// Machine describes where the numbers were taken.
type Machine struct {
	Date     time.Time
	CPU      string
	Cores    int
	MemoryGB float64
	OS       string
	Go       string
	Kiln     string
	// Engines: PostgreSQL, SQLite, embedded and external nats-server.
	Engines []string
	// Load is /proc/loadavg's 1, 5 and 15 minute averages when the
	// report is written: above the core count, something else competed
	// for the machine during the run, and absolute figures suffer.
	Load string
}

// Describe reads the machine and the engine versions; what it cannot read
// it leaves out.
func Describe(ctx context.Context, cfg Config) Machine {
	m := Machine{Date: time.Now().UTC(), Cores: runtime.NumCPU(), Go: runtime.Version(), OS: osRelease()}
	m.CPU = firstValue("/proc/cpuinfo", "model name")
	if kb := firstValue("/proc/meminfo", "MemTotal"); kb != "" {
		var n float64
		if _, err := fmt.Sscanf(kb, "%f", &n); err == nil {
			m.MemoryGB = n / (1 << 20)
		}
	}
	m.Kiln = kilnVersion()
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.Load = strings.Join(f[:3], ", ")
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if db, err := sql.Open("sqlite", ":memory:"); err == nil {
		var v string
		if db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&v) == nil {
			m.Engines = append(m.Engines, "SQLite "+v+" (modernc.org/sqlite)")
		}
		db.Close()
	}
	m.Engines = append(m.Engines, "embedded nats-server "+natsserver.VERSION)
	for _, be := range cfg.Backends {
		if be != Postgres {
			continue
		}
		u := cfg.DatabaseURL
		if u == "" {
			u = defaultPostgres
		}
		if db, err := sql.Open("postgres", u); err == nil {
			var v string
			if db.QueryRowContext(ctx, "SHOW server_version").Scan(&v) == nil {
				m.Engines = append(m.Engines, "PostgreSQL "+v)
			}
			db.Close()
		}
		nu := cfg.NATSURL
		if nu == "" {
			nu = nats.DefaultURL
		}
		if nc, err := nats.Connect(nu, nats.Timeout(3*time.Second)); err == nil {
			m.Engines = append(m.Engines, "external nats-server "+nc.ConnectedServerVersion())
			nc.Close()
		}
	}
	return m
}

const defaultPostgres = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func firstValue(file, key string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		}
	}
	return ""
}

func osRelease() string {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return runtime.GOOS
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return runtime.GOOS
}

// kilnVersion is the commit the harness was built from.
func kilnVersion() string {
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// Markdown writes the report: the machine, the command, the table, and the
// missed targets with their notes.
func Markdown(w io.Writer, m Machine, command string, scale Scale, rows []Row) {
	fmt.Fprintf(w, "# Kiln benchmarks\n\n")
	fmt.Fprintf(w, "Written by `kiln-bench` (`make bench`). Absolute figures on a shared 2-core machine are noise;\n")
	fmt.Fprintf(w, "the ratios to the raw engines, measured in the same run, are what to compare.\n\n")
	fmt.Fprintf(w, "Rerun: `%s`\n\n", command)
	fmt.Fprintf(w, "| machine | |\n|---|---|\n")
	fmt.Fprintf(w, "| date | %s |\n", m.Date.Format(time.RFC3339))
	fmt.Fprintf(w, "| CPU | %s, %d cores |\n", orUnknown(m.CPU), m.Cores)
	fmt.Fprintf(w, "| memory | %.1f GiB |\n", m.MemoryGB)
	if m.Load != "" {
		fmt.Fprintf(w, "| load average (1, 5, 15 min) at the end | %s |\n", m.Load)
	}
	fmt.Fprintf(w, "| OS | %s |\n", orUnknown(m.OS))
	fmt.Fprintf(w, "| Go | %s |\n", m.Go)
	fmt.Fprintf(w, "| Kiln | %s |\n", m.Kiln)
	fmt.Fprintf(w, "| engines | %s |\n", strings.Join(m.Engines, "; "))
	fmt.Fprintf(w, "| scale | %s |\n\n", scaleText(scale))

	fmt.Fprintf(w, "| scenario | backend | metric | Kiln | baseline | ratio | target | met |\n")
	fmt.Fprintf(w, "|---|---|---|---:|---:|---:|---|---|\n")
	var missed []Row
	for _, r := range rows {
		val := fmt.Sprintf("%s %s", num(r.Value), r.Unit)
		if r.Metric == "failed" {
			val = "—"
		}
		base, ratio := "", ""
		if r.Baseline != 0 {
			base = fmt.Sprintf("%s %s", num(r.Baseline), r.Unit)
			ratio = fmt.Sprintf("%.0f%%", 100*r.Ratio())
		}
		met := ""
		if r.Met != nil {
			met = "yes"
			if !*r.Met {
				met = "**no**"
				missed = append(missed, r)
			}
		}
		if r.Metric == "failed" {
			met = "**failed**"
			missed = append(missed, r)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", cell(r.Scenario), r.Backend, cell(r.Metric), val, base, ratio, cell(r.Target), met)
	}
	var notes []Row
	for _, r := range rows {
		if r.Note != "" && (r.Met == nil || *r.Met) && r.Metric != "failed" {
			notes = append(notes, r)
		}
	}
	if len(missed) > 0 {
		fmt.Fprintf(w, "\n## Missed targets and failures\n\n")
		for _, r := range missed {
			if r.Metric == "failed" {
				fmt.Fprintf(w, "- %s, %s: failed to run: %s\n", r.Scenario, r.Backend, r.Note)
				continue
			}
			fmt.Fprintf(w, "- %s, %s, %s: %s %s (target %s). %s\n", r.Scenario, r.Backend, r.Metric, num(r.Value), r.Unit, r.Target, r.Note)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n## Notes\n\n")
		for _, r := range notes {
			fmt.Fprintf(w, "- %s, %s, %s: %s\n", r.Scenario, r.Backend, r.Metric, r.Note)
		}
	}
}

func scaleText(s Scale) string {
	return fmt.Sprintf("%s: %s sustained phases, N=%d connections, K=%d clients, W=%d workers × C=%d, %d latency samples, pending %v over %d shapes and %d workers, %d abort runs × %d children, %d heartbeating workers",
		s.Name, s.Duration, s.Conns, s.Clients, s.Workers, s.Concurrency, s.LatencySamples, s.Pending, s.Shapes, s.SimWorkers, s.AbortRuns, s.AbortChildren, s.FootprintWorkers)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// cell keeps a table cell on one line and its pipes escaped.
func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", `\|`)
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
