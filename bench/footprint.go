package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// Footprint targets, in MiB.
const (
	footprintServerTarget = 200
	footprintWorkerTarget = 30
)

// runFootprint measures processes, not the harness: the resident memory of
// an idle kiln-worker process, and that of a kiln-server process (SQLite,
// embedded NATS) to which FootprintWorkers simulated workers are connected
// as real ones are: registered, metadata reported, one authenticated NATS
// connection each, heartbeats; then also pulling from their two durable
// consumers each.
func runFootprint(ctx context.Context, e *Env) ([]Row, error) {
	serverBin, workerBin, err := e.kilnBinaries(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := e.TempDir()
	if err != nil {
		return nil, err
	}
	n := e.Scale.FootprintWorkers
	// The default interval, shortened to the scale's phase length (tiny).
	hb := min(server.DefaultHeartbeatInterval, max(e.Scale.Duration, time.Second))

	// The records are made before the server starts, as `kiln-server admin`
	// would make them: nothing else uses the database yet.
	dataDir := filepath.Join(dir, "server")
	recs, err := footprintRecords(ctx, dataDir, n+1)
	if err != nil {
		return nil, err
	}
	srv, err := e.footprintServer(ctx, serverBin, dir, dataDir, hb)
	if err != nil {
		return nil, err
	}
	admin := client.New(srv.apiURL, recs.userToken)

	// (b) first, so that its consumers are not refused: one idle kiln-worker
	// process, stopped before the server is measured.
	wk, err := e.footprintWorker(ctx, workerBin, dir, srv.apiURL, recs.workers[n])
	if err != nil {
		return nil, err
	}
	if _, err := footprintWaitConnected(ctx, admin, recs.workers[n:], nil, time.Minute); err != nil {
		return nil, fmt.Errorf("kiln-worker: %w (log: %s)", err, footprintTail(wk.log))
	}
	idle := max(3*time.Second, 2*hb)
	if err := footprintSleep(ctx, idle); err != nil {
		return nil, err
	}
	wrss, _, err := footprintRSS(wk.pid())
	if err != nil {
		return nil, fmt.Errorf("kiln-worker: %w", err)
	}
	wk.stop()
	workerRow := Row{
		Metric: "idle worker RSS", Value: wrss, Unit: "MB",
		Target: fmt.Sprintf("< %d MB", footprintWorkerTarget), Met: Met(wrss < footprintWorkerTarget),
		Note: fmt.Sprintf("kiln-worker process, connected and idle for %s", idle),
	}

	// (a) n simulated workers heartbeating.
	sims := &footprintSims{apiURL: srv.apiURL, metadata: footprintMetadata(ctx)}
	e.Defer(sims.close)
	start := time.Now()
	if err := sims.connect(ctx, recs.workers[:n]); err != nil {
		return nil, err
	}
	seen, err := footprintWaitConnected(ctx, admin, recs.workers[:n], nil, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	e.Log.Info().Int("workers", n).Dur("took", time.Since(start)).Msg("simulated workers connected")
	rss, hwm, err := footprintSettle(ctx, srv.pid(), hb)
	if err != nil {
		return nil, err
	}
	rows := []Row{{
		Metric: fmt.Sprintf("server RSS, %d workers heartbeating", n), Value: rss, Unit: "MB",
		Target: fmt.Sprintf("< %d MB", footprintServerTarget), Met: Met(rss < footprintServerTarget),
		Note: fmt.Sprintf("kiln-server process, SQLite + embedded NATS; a NATS connection per worker, heartbeat every %s; peak %.0f MB%s", hb, hwm, footprintGoMemory(ctx, srv.apiURL)),
	}}

	// Then also pulling from their consumers, as idle kiln-workers do.
	start = time.Now()
	consuming, cerr := sims.consume(ctx)
	if cerr != nil && !errors.Is(cerr, jetstream.ErrMaximumConsumersLimit) {
		return nil, cerr
	}
	e.Log.Info().Int("workers", consuming).Dur("took", time.Since(start)).Msg("simulated workers consume")
	rss, hwm, err = footprintSettle(ctx, srv.pid(), hb)
	if err != nil {
		return nil, err
	}
	row := Row{
		Metric: fmt.Sprintf("server RSS, %d workers heartbeating and pulling", n), Value: rss, Unit: "MB",
		Target: fmt.Sprintf("< %d MB", footprintServerTarget), Met: Met(rss < footprintServerTarget && cerr == nil),
		Note: fmt.Sprintf("as above, and each worker's 2 durable pull consumers (%d); peak %.0f MB%s", 2*n, hwm, footprintGoMemory(ctx, srv.apiURL)),
	}
	if cerr != nil {
		row.Note = fmt.Sprintf("only %d of %d workers got their 2 consumers: %v (refused by nats-server: "+
			"see the work-queue stream's MaxConsumers in package bus); peak %.0f MB", consuming, n, cerr, hwm)
	}
	rows = append(rows, row)
	// Every one of them heartbeated meanwhile, and is connected.
	if _, err := footprintWaitConnected(ctx, admin, recs.workers[:n], seen, 5*hb); err != nil {
		return nil, fmt.Errorf("after the measurement: %w", err)
	}
	return append(rows, workerRow), nil
}

// footprintRecord is a worker record made before the server starts.
type footprintRecord struct {
	name, activation string
}

type footprintRecordSet struct {
	userToken string
	workers   []footprintRecord
}

// footprintRecords creates, in the store of dataDir, an admin user and n
// enabled workers with activation tokens.
func footprintRecords(ctx context.Context, dataDir string, n int) (footprintRecordSet, error) {
	var out footprintRecordSet
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return out, err
	}
	st, err := store.Open(ctx, "", dataDir)
	if err != nil {
		return out, err
	}
	defer st.Close()
	u, err := st.CreateUser(ctx, "bench", "bench@example.org", true)
	if err != nil {
		return out, err
	}
	if out.userToken, err = st.CreateUserToken(ctx, u.ID, "kiln-bench"); err != nil {
		return out, err
	}
	for i := range n {
		name := fmt.Sprintf("footprint-%d", i)
		wk, err := st.CreateWorker(ctx, name, "external")
		if err != nil {
			return out, err
		}
		act, err := st.CreateActivationToken(ctx, wk.ID)
		if err != nil {
			return out, err
		}
		out.workers = append(out.workers, footprintRecord{name: name, activation: act})
	}
	return out, nil
}

// footprintMetadata is what a real worker of this machine reports.
func footprintMetadata(ctx context.Context) schemas.Metadata {
	md := tasks.AnalyzeSystem(ctx, "external")
	for k, v := range tasks.Default().Analyze(ctx, tasks.Host{}) {
		md[k] = v
	}
	md["kiln:concurrency"] = 1
	md["kiln:cgroup"] = false
	return md
}

// kilnBinaries returns the kiln-server and kiln-worker binaries: those of
// the configuration, or built once per harness run from the module that
// holds the working directory.
func (e *Env) kilnBinaries(ctx context.Context) (serverBin, workerBin string, err error) {
	s := e.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bins == nil {
		s.bins = map[string]string{}
	}
	if e.KilnServer != "" {
		s.bins["kiln-server"] = e.KilnServer
	}
	if e.KilnWorker != "" {
		s.bins["kiln-worker"] = e.KilnWorker
	}
	var missing []string
	for _, name := range []string{"kiln-server", "kiln-worker"} {
		if s.bins[name] == "" {
			missing = append(missing, "./cmd/"+name)
		}
	}
	if len(missing) > 0 {
		root, err := footprintModuleRoot()
		if err != nil {
			return "", "", err
		}
		if s.binsD == "" {
			if s.binsD, err = os.MkdirTemp(e.WorkDir, "kiln-bench-bin-"); err != nil {
				return "", "", err
			}
		}
		start := time.Now()
		e.Log.Info().Strs("packages", missing).Msg("building the binaries")
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", s.binsD + "/"}, missing...)...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s in %s: %w\n%s", strings.Join(missing, " "), root, err, out)
		}
		e.Log.Info().Dur("took", time.Since(start)).Msg("built")
		for _, p := range missing {
			name := filepath.Base(p)
			s.bins[name] = filepath.Join(s.binsD, name)
		}
	}
	return s.bins["kiln-server"], s.bins["kiln-worker"], nil
}

// footprintModuleRoot finds Kiln's module root at or above the working
// directory.
func footprintModuleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/kiln-ci/kiln\n")) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("footprint: no go.mod of github.com/kiln-ci/kiln at or above %s to build kiln-server and kiln-worker from: "+
				"run the harness in the repository or give --kiln-server and --kiln-worker", wd)
		}
	}
}

// footprintProc is a kiln process the scenario started.
type footprintProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	once sync.Once
}

func (p *footprintProc) pid() int { return p.cmd.Process.Pid }

// footprintStart runs bin with args, its output in log, and stops it when
// the scenario ends. The child gets none of the
// harness's KILN_ variables: only its options configure it.
func (e *Env) footprintStart(bin, log string, args ...string) (*footprintProc, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KILN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Should the harness die, so does the process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &footprintProc{cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.Defer(p.stop)
	return p, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 10s.
func (p *footprintProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// footprintServerProc is the kiln-server process.
type footprintServerProc struct {
	*footprintProc
	apiURL string
}

// footprintServer starts kiln-server on SQLite and embedded NATS in
// dataDir, on free ports, and waits until it is healthy.
func (e *Env) footprintServer(ctx context.Context, bin, dir, dataDir string, hb time.Duration) (*footprintServerProc, error) {
	ports, err := footprintFreePorts(2)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "server.conf")
	// Its own, empty, config file: never the machine's /etc/kiln/server.conf.
	if err := os.WriteFile(conf, []byte("{}\n"), 0o600); err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	p, err := e.footprintStart(bin, filepath.Join(dir, "server.log"), "--config", conf, "--data-dir", dataDir,
		"--listen", listen, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--heartbeat-interval", hb.String(), "--log-format", "json", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	base := "http://" + listen
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("kiln-server exited: %s", footprintTail(p.log))
		default:
		}
		if footprintHealthy(ctx, base+"/healthz") {
			return &footprintServerProc{footprintProc: p, apiURL: base + "/api"}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("kiln-server not healthy on %s within a minute: %s", base, footprintTail(p.log))
		}
		if err := footprintSleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func footprintHealthy(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// footprintWorker starts a kiln-worker process that registers as rec.
func (e *Env) footprintWorker(ctx context.Context, bin, dir, apiURL string, rec footprintRecord) (*footprintProc, error) {
	wdir := filepath.Join(dir, "worker")
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(wdir, "worker.conf")
	if err := os.WriteFile(conf, []byte("{}\n"), 0o600); err != nil {
		return nil, err
	}
	act := filepath.Join(wdir, "activation-token")
	if err := os.WriteFile(act, []byte(rec.activation), 0o600); err != nil {
		return nil, err
	}
	return e.footprintStart(bin, filepath.Join(wdir, "worker.log"), "--config", conf, "--api-url", apiURL,
		"--token-file", filepath.Join(wdir, "token"), "--activation-token-file", act,
		"--name", rec.name, "--work-dir", filepath.Join(wdir, "work"), "--grace-period", "1s",
		"--log-format", "json", "--log-level", "info")
}

// footprintFreePorts returns n distinct free TCP ports of 127.0.0.1.
func footprintFreePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// footprintWaitConnected waits until every worker of recs is connected
// with metadata and, for those in after, was seen later than there; it
// returns when each was last seen.
func footprintWaitConnected(ctx context.Context, admin *client.Client, recs []footprintRecord, after map[string]time.Time, timeout time.Duration) (map[string]time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		ws, err := admin.ListWorkers(ctx)
		if err != nil && !client.IsTransient(err) {
			return nil, err
		}
		byName := map[string]schemas.Worker{}
		for _, w := range ws {
			byName[w.Name] = w
		}
		seen := map[string]time.Time{}
		missing := 0
		for _, r := range recs {
			w, ok := byName[r.name]
			if !ok || !w.Connected || w.DynamicMetadataUpdatedAt == nil || w.LastSeenAt == nil ||
				(after != nil && !w.LastSeenAt.After(after[r.name])) {
				missing++
				continue
			}
			seen[r.name] = *w.LastSeenAt
		}
		if err == nil && missing == 0 {
			return seen, nil
		}
		if time.Now().After(deadline) {
			what := "connected"
			if after != nil {
				what = "heartbeating"
			}
			return nil, fmt.Errorf("%d of %d workers not %s after %s", missing, len(recs), what, timeout)
		}
		if err := footprintSleep(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// footprintSettle waits three heartbeat intervals, then samples the RSS of
// pid for one more and returns the largest sample and the peak (VmHWM), in
// MiB.
func footprintSettle(ctx context.Context, pid int, hb time.Duration) (rss, hwm float64, err error) {
	if err := footprintSleep(ctx, 3*hb); err != nil {
		return 0, 0, err
	}
	end := time.Now().Add(hb)
	for {
		r, h, err := footprintRSS(pid)
		if err != nil {
			return 0, 0, err
		}
		rss, hwm = max(rss, r), max(hwm, h)
		if time.Now().After(end) {
			return rss, hwm, nil
		}
		if err := footprintSleep(ctx, 250*time.Millisecond); err != nil {
			return 0, 0, err
		}
	}
}

// footprintRSS reads VmRSS and VmHWM of pid, in MiB.
func footprintRSS(pid int) (rss, hwm float64, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		fields := strings.Fields(val) // "123456 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %q", pid, key, val)
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, key, err)
		}
		if key == "VmRSS" {
			rss = kb / 1024
		} else {
			hwm = kb / 1024
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS and VmHWM", pid)
	}
	return rss, hwm, nil
}

func footprintSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// footprintTail is the end of a log file, for errors.
func footprintTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// footprintSims are simulated workers: each does what an idle kiln-worker
// does on the wire, with its own token and NATS connection.
type footprintSims struct {
	apiURL   string
	metadata schemas.Metadata

	mu     sync.Mutex
	sims   []*footprintSim
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type footprintSim struct {
	name  string
	api   *client.Client
	cfg   schemas.WorkerConfig
	nc    *nats.Conn
	js    jetstream.JetStream
	names bus.Names
	ccs   []jetstream.ConsumeContext
}

// footprintSetup is how many simulated workers register at once.
const footprintSetup = 16

// connect registers a simulated worker for each record (with its
// activation token), reports its metadata, connects it to NATS with its
// own token and inbox, and starts its heartbeats.
func (s *footprintSims) connect(ctx context.Context, recs []footprintRecord) error {
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	return footprintEach(ctx, recs, func(ctx context.Context, rec footprintRecord) error {
		sim, err := s.connectOne(ctx, rec)
		if err != nil {
			return fmt.Errorf("simulated worker %s: %w", rec.name, err)
		}
		s.mu.Lock()
		s.sims = append(s.sims, sim)
		s.mu.Unlock()
		s.wg.Go(func() { sim.heartbeat(life) })
		return nil
	})
}

// footprintEach calls f for every item, footprintSetup at a time, and
// returns the first error; after one, the others' ctx is cancelled.
func footprintEach[T any](ctx context.Context, items []T, f func(context.Context, T) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, footprintSetup)
	var wg sync.WaitGroup
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(ctx, it); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

func (s *footprintSims) connectOne(ctx context.Context, rec footprintRecord) (*footprintSim, error) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	token := base64.RawURLEncoding.EncodeToString(raw)
	err := client.New(s.apiURL, "").RegisterWorker(ctx, schemas.WorkerRegister{Token: token, FQDN: rec.name, WorkerType: "external"}, rec.activation)
	if err != nil {
		return nil, err
	}
	sim := &footprintSim{name: rec.name, api: client.New(s.apiURL, token)}
	if err := sim.api.PutDynamicMetadata(ctx, s.metadata); err != nil {
		return nil, err
	}
	if sim.cfg, err = sim.api.WorkerConfig(ctx); err != nil {
		return nil, err
	}
	prefix, _, _ := strings.Cut(sim.cfg.AssignSubject, ".")
	if sim.names, err = bus.NewNames(prefix); err != nil {
		return nil, err
	}
	opts := []nats.Option{nats.Name("kiln-bench simulated worker " + rec.name), nats.MaxReconnects(-1)}
	if sim.cfg.NATSInbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(sim.cfg.NATSInbox))
	}
	if sim.cfg.NATSAuth == schemas.NATSAuthWorkerToken {
		opts = append(opts, nats.Token(token))
	}
	if sim.nc, err = nats.Connect(sim.cfg.NATSURL, opts...); err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", sim.cfg.NATSURL, err)
	}
	if sim.js, err = jetstream.New(sim.nc); err != nil {
		sim.nc.Close()
		return nil, err
	}
	return sim, nil
}

// heartbeat publishes the worker's heartbeat every interval the server
// gave, as kiln-worker does, until ctx ends.
func (sim *footprintSim) heartbeat(ctx context.Context) {
	interval, err := time.ParseDuration(sim.cfg.HeartbeatInterval)
	if err != nil || interval <= 0 {
		interval = server.DefaultHeartbeatInterval
	}
	b, _ := json.Marshal(schemas.Heartbeat{WorkerID: sim.cfg.WorkerID, Running: []int64{}})
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		_ = sim.nc.Publish(sim.cfg.HeartbeatSubject, b)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consume creates each simulated worker's two durable consumers
// (assignments, control) and pulls from them as kiln-worker does; it
// returns how many workers have both, and the first error.
func (s *footprintSims) consume(ctx context.Context) (consuming int, err error) {
	s.mu.Lock()
	sims := s.sims
	s.mu.Unlock()
	var done atomic.Int64
	err = footprintEach(ctx, sims, func(ctx context.Context, sim *footprintSim) error {
		if err := sim.consume(ctx, s.metadata); err != nil {
			return fmt.Errorf("simulated worker %s: %w", sim.name, err)
		}
		done.Add(1)
		return nil
	})
	return int(done.Load()), err
}

func (sim *footprintSim) consume(ctx context.Context, md schemas.Metadata) error {
	id := sim.cfg.WorkerID
	for _, c := range []struct {
		name, subject string
		handle        func(jetstream.Msg)
	}{
		// No work is submitted: an assignment goes back.
		{sim.cfg.Consumer, sim.cfg.AssignSubject, func(m jetstream.Msg) { _ = m.Nak() }},
		{sim.names.ControlConsumer(id), sim.names.ControlSubject(id), func(m jetstream.Msg) {
			var c bus.Control
			if json.Unmarshal(m.Data(), &c) == nil && c.Type == bus.ControlRequestMetadata {
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					_ = sim.api.PutDynamicMetadata(ctx, md)
				}()
			}
			_ = m.Ack()
		}},
	} {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cons, err := bus.WorkerConsumer(cctx, sim.js, sim.cfg.Stream, c.name, c.subject)
		cancel()
		if err != nil {
			return err
		}
		cc, err := cons.Consume(c.handle, jetstream.PullMaxMessages(1), jetstream.PullExpiry(30*time.Second))
		if err != nil {
			return fmt.Errorf("consume %s: %w", c.name, err)
		}
		sim.ccs = append(sim.ccs, cc)
	}
	return nil
}

// close stops the heartbeats and closes every connection.
func (s *footprintSims) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	for _, sim := range s.sims {
		for _, cc := range sim.ccs {
			cc.Stop()
		}
		sim.nc.Close()
	}
	s.sims = nil
}

// footprintGoMemory reads the server's own account of its memory from
// /metrics (the Go collector): heap in use, goroutine stacks and the number
// of goroutines, to say where an RSS goes.
func footprintGoMemory(ctx context.Context, apiURL string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(apiURL, "/api")+"/metrics", nil)
	if err != nil {
		return ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		switch name {
		case "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines":
			if v, err := strconv.ParseFloat(value, 64); ok && err == nil {
				vals[name] = v
			}
		}
	}
	if len(vals) < 3 {
		return ""
	}
	return fmt.Sprintf("; Go heap in use %.0f MB, goroutine stacks %.0f MB (%.0f goroutines)",
		vals["go_memstats_heap_inuse_bytes"]/(1<<20), vals["go_memstats_stack_inuse_bytes"]/(1<<20), vals["go_goroutines"])
}
