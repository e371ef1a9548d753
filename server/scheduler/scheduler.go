package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/bus"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// Publisher sends outbox messages and removes them from the outbox once
// stored by JetStream. Messages it could not send stay for the relay.
type Publisher interface {
	Publish(ctx context.Context, msgs []store.Message)
}

// Options tune the scheduler; zero values take the documented defaults.
type Options struct {
	// Sweep is the period of the safety-net pass (default 10s).
	Sweep time.Duration
	// HeartbeatTimeout: a worker not seen for this long is disconnected
	// (default 30s). Connected workers are preferred.
	HeartbeatTimeout time.Duration
	// LostAfter: a worker not seen for this long gets no new assignments
	// (default 5m). Until then, assignments wait for it in its durable
	// consumer, which covers restarts.
	LostAfter time.Duration
	Logger    zerolog.Logger
	// MinGap is the least time from the start of one pass to the start of
	// the next (default 10ms). Under load every submission and completion
	// triggers a pass and passes ran back to back, one per trigger or two;
	// waiting a little lets one pass place what many triggers announced.
	// An idle scheduler passes at once.
	MinGap time.Duration
	// Devices is the device upkeep policy.
	Devices DevicePolicy
	// Registerer receives the scheduler's metrics (nil: none).
	Registerer prometheus.Registerer
}

// Scheduler matches pending work requests to workers.
type Scheduler struct {
	st    *store.Store
	reg   *tasks.Registry
	pub   Publisher
	names bus.Names
	opt   Options
	log   zerolog.Logger

	kick chan struct{}

	mu     sync.Mutex
	reqs   map[string]shapeReq // requirements per shape, immutable per shape
	leader bool

	// passMu makes passes take turns; views belongs to the pass.
	passMu sync.Mutex
	views  map[int64]*workerView

	passCount   atomic.Int64
	passes      prometheus.Histogram
	assignments prometheus.Counter
}

type shapeReq struct {
	task tasks.Task
	req  tasks.Requirements
	err  error
}

// New returns a scheduler; call Run to start it.
func New(st *store.Store, reg *tasks.Registry, pub Publisher, names bus.Names, opt Options) *Scheduler {
	if opt.Sweep <= 0 {
		opt.Sweep = 10 * time.Second
	}
	if opt.HeartbeatTimeout <= 0 {
		opt.HeartbeatTimeout = 30 * time.Second
	}
	if opt.LostAfter <= 0 {
		opt.LostAfter = 5 * time.Minute
	}
	if opt.MinGap <= 0 {
		opt.MinGap = 10 * time.Millisecond
	}
	opt.Devices.defaults()
	s := &Scheduler{
		st: st, reg: reg, pub: pub, names: names, opt: opt, log: opt.Logger,
		kick:  make(chan struct{}, 1),
		reqs:  map[string]shapeReq{},
		views: map[int64]*workerView{},
		passes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kiln_scheduler_pass_seconds", Help: "Duration of scheduler passes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		assignments: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_scheduler_assignments_total", Help: "Work requests assigned to workers.",
		}),
	}
	if opt.Registerer != nil {
		opt.Registerer.MustRegister(s.passes, s.assignments)
	}
	return s
}

// Trigger asks for a pass soon. It never blocks; triggers that arrive during
// a pass coalesce into one more pass.
func (s *Scheduler) Trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Leader reports whether this replica currently schedules.
func (s *Scheduler) Leader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

// Passes counts the passes started so far.
func (s *Scheduler) Passes() int64 { return s.passCount.Load() }

// Run schedules until ctx ends: a pass on every trigger and every sweep.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.opt.Sweep)
	defer t.Stop()
	for {
		began := time.Now()
		s.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
		if wait := s.opt.MinGap - time.Since(began); wait > 0 {
			gap := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				gap.Stop()
				return
			case <-gap.C:
			}
		}
	}
}

func (s *Scheduler) step(ctx context.Context) {
	lead, err := s.st.TryLead(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("scheduler leader check")
		lead = false
	}
	s.mu.Lock()
	changed := lead != s.leader
	s.leader = lead
	s.mu.Unlock()
	if changed {
		s.log.Info().Bool("leader", lead).Msg("scheduler leadership changed")
	}
	if !lead {
		return
	}
	if _, err := s.Pass(ctx); err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Msg("scheduler pass")
	}
}

// candidate is a worker as one pass sees it.
type candidate struct {
	w         store.Worker
	md        schemas.Metadata
	view      *workerView
	free      int
	connected bool
}

// workerView is what passes derive from a worker's metadata, kept while
// its metadata stays the same: parsing every worker's metadata and asking
// CanRunOn for every shape and worker took a third of a pass with 1000
// workers and 50 shapes (kiln-bench, scheduler scale). A shape's
// requirements never change, and CanRunOn depends on nothing else.
type workerView struct {
	static, dynamic string
	md              schemas.Metadata
	verdicts        map[string]error // CanRunOn's answer by shape
}

// maxVerdicts bounds a worker's remembered verdicts; shapes come and go.
const maxVerdicts = 10000

// view returns w's view, made anew when its metadata changed.
func (s *Scheduler) view(w store.Worker) *workerView {
	v := s.views[w.ID]
	if v == nil || v.static != w.StaticMetadata || v.dynamic != w.DynamicMetadata {
		v = &workerView{static: w.StaticMetadata, dynamic: w.DynamicMetadata, md: w.Metadata(), verdicts: map[string]error{}}
		s.views[w.ID] = v
	}
	return v
}

// canRunOn is sr.task.CanRunOn for the worker, remembered per shape.
func (v *workerView) canRunOn(shape string, sr shapeReq) error {
	if err, ok := v.verdicts[shape]; ok {
		return err
	}
	err := sr.task.CanRunOn(sr.req, v.md)
	if len(v.verdicts) >= maxVerdicts {
		clear(v.verdicts)
	}
	v.verdicts[shape] = err
	return err
}

// Pass runs one scheduling pass and returns how many requests it assigned.
func (s *Scheduler) Pass(ctx context.Context) (int, error) {
	s.passMu.Lock()
	defer s.passMu.Unlock()
	s.passCount.Add(1)
	start := time.Now()
	defer func() { s.passes.Observe(time.Since(start).Seconds()) }()

	if n, err := s.st.ReconcileDeviceLeases(ctx); err != nil {
		return 0, err
	} else if n > 0 {
		s.log.Debug().Int("devices", n).Msg("device leases released")
	}
	workers, err := s.st.Workers(ctx)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	var cands []*candidate
	enabled := 0
	live := map[int64]bool{}
	listed := make(map[int64]bool, len(workers))
	for _, w := range workers {
		listed[w.ID] = true
		if !w.Enabled || w.TokenHash == nil {
			continue
		}
		enabled++
		v := s.view(w)
		c := &candidate{w: w, md: v.md, view: v, free: w.EffectiveConcurrency() - w.Active}
		if w.LastSeenAt.Valid {
			age := now.Sub(w.LastSeenAt.Time)
			c.connected = w.ConnectedAt.Valid && age < s.opt.HeartbeatTimeout
			if age >= s.opt.LostAfter {
				c.free = 0 // gone too long to be handed work
				c.connected = false
			}
		} else {
			c.free = 0 // never reported its metadata
		}
		live[w.ID] = c.connected
		cands = append(cands, c)
	}
	for id := range s.views {
		if !listed[id] {
			delete(s.views, id)
		}
	}
	devs, err := loadDevices(ctx, s.st)
	if err != nil {
		return 0, err
	}
	if err := s.upkeep(ctx, devs, live, now); err != nil {
		return 0, err
	}
	shapes, err := s.st.WaitingShapes(ctx)
	if err != nil {
		return 0, err
	}
	if len(shapes) == 0 {
		return 0, s.st.SetWaitingReasons(ctx, map[string]string{})
	}

	reasons := map[string]string{}
	eligible := map[string][]*candidate{}
	// matches holds what the shapes that need a device need, special
	// which of them are device special tasks.
	matches := map[string]*tasks.DeviceMatch{}
	special := map[string]bool{}
	// limits says how many requests of each shape the free slots could
	// take now, plus one: a queue that comes back longer than what was
	// assigned of it says that requests of the shape still wait (one
	// more request assigned, when a slot is left, is one more right
	// choice).
	limits := map[string]int{}
	for _, sh := range shapes {
		sr, err := s.requirements(ctx, sh)
		if err != nil {
			reasons[sh.Shape] = err.Error()
			continue
		}
		var elig []*candidate
		refusals := map[string][]string{}
		for _, c := range cands {
			if err := c.view.canRunOn(sh.Shape, sr); err != nil {
				msg := strings.TrimPrefix(err.Error(), tasks.ErrCannotRun.Error()+": ")
				refusals[msg] = append(refusals[msg], c.w.Name)
				continue
			}
			elig = append(elig, c)
		}
		if len(elig) == 0 {
			reasons[sh.Shape] = noWorkerReason(enabled, refusals)
			continue
		}
		var free int
		if needs, ok := sr.task.(tasks.DeviceNeeds); ok {
			match := needs.NeedsDevice(sr.req)
			special[sh.Shape] = schemas.IsDeviceTask(sh.TaskName)
			var why string
			elig, free, why = devs.eligible(match, special[sh.Shape], elig)
			if len(elig) == 0 {
				reasons[sh.Shape] = why
				continue
			}
			matches[sh.Shape] = &match
		} else {
			for _, c := range elig {
				free += max(c.free, 0)
			}
		}
		eligible[sh.Shape] = elig
		if free == 0 {
			reasons[sh.Shape] = devs.busyReason(matches[sh.Shape], elig)
			continue
		}
		limits[sh.Shape] = free + 1
	}
	items, err := s.st.QueueAll(ctx, limits)
	if err != nil {
		return 0, err
	}
	// The jobs whose devices are prepared go whatever their place.
	held, err := s.st.QueueItems(ctx, devs.heldReady())
	if err != nil {
		return 0, err
	}
	seen := map[int64]bool{}
	for _, it := range items {
		seen[it.ID] = true
	}
	for _, it := range held {
		if !seen[it.ID] {
			items = append(items, it)
		}
	}
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i], items[j]
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.ID < b.ID
	})

	queued := map[string]int{}
	for _, it := range items {
		queued[it.Shape]++
	}
	var msgs []store.Message
	assigned := map[string]int{}
	// batch holds the assignments without a device, made together after
	// the loop; shapeOf[i] is batch[i]'s shape.
	var batch []store.Assignment
	var shapeOf []string
	// preparing says, per shape, which device is being prepared for one
	// of its jobs: that is why the job waits.
	preparing := map[string]string{}
	for _, it := range items {
		var c *candidate
		var dev *poolDevice
		if m := matches[it.Shape]; m != nil {
			c, dev = devs.pick(*m, special[it.Shape], it.ID, eligible[it.Shape])
			if c == nil && dev != nil {
				preparing[it.Shape] = fmt.Sprintf("device %s is being prepared for work request %d (%s)", dev.d.Name, it.ID, orNothing(dev.d.Needs))
				continue
			}
			if c != nil && !special[it.Shape] {
				needs, why, err := s.preJob(ctx, dev, it.ID)
				if err != nil {
					s.publish(ctx, msgs)
					return len(msgs), err
				}
				if needs != "" {
					dev.taken = true
					err := s.st.HoldDevice(ctx, dev.d.ID, it.ID, needs, why)
					if err != nil && !errors.Is(err, store.ErrConflict) {
						s.publish(ctx, msgs)
						return len(msgs), err
					}
					if err == nil {
						preparing[it.Shape] = fmt.Sprintf("device %s is being prepared for work request %d (%s)", dev.d.Name, it.ID, needs)
					}
					// The next pass creates the special task.
					s.Trigger()
					continue
				}
			}
		} else {
			c = pick(eligible[it.Shape])
			if c == nil {
				continue
			}
			// Taken for now; assignAll gives the slot back when the
			// store refuses.
			c.free--
			assigned[it.Shape]++
			batch = append(batch, s.assignment(it, c, nil))
			shapeOf = append(shapeOf, it.Shape)
			continue
		}
		if c == nil {
			continue
		}
		msg, err := s.assignDevice(ctx, it, c, dev)
		if dev != nil {
			// Taken by this request, or by something else meanwhile.
			dev.taken = true
		}
		if errors.Is(err, store.ErrConflict) {
			// The worker filled up behind our back (a manual change, a
			// request that went away): look again on the next pass.
			c.free = 0
			s.Trigger()
			continue
		}
		if err != nil {
			s.publish(ctx, msgs)
			return len(msgs), err
		}
		c.free--
		assigned[it.Shape]++
		msgs = append(msgs, msg)
	}
	made, refused, err := s.st.AssignAll(ctx, batch)
	msgs = append(msgs, made...)
	if err != nil {
		s.publish(ctx, msgs)
		return len(msgs), err
	}
	for _, i := range refused {
		// The worker filled up behind our back (a manual change, a
		// request that went away): look again on the next pass.
		assigned[shapeOf[i]]--
		s.Trigger()
	}
	s.log.Debug().Int("assigned", len(made)).Int("refused", len(refused)).Msg("assignments without a device")
	s.publish(ctx, msgs)
	for _, sh := range shapes {
		if _, ok := reasons[sh.Shape]; !ok && assigned[sh.Shape] < queued[sh.Shape] {
			if why, ok := preparing[sh.Shape]; ok {
				reasons[sh.Shape] = why
				continue
			}
			reasons[sh.Shape] = devs.busyReason(matches[sh.Shape], eligible[sh.Shape])
		}
	}
	if err := s.st.SetWaitingReasons(ctx, reasons); err != nil {
		return len(msgs), err
	}
	return len(msgs), nil
}

func (s *Scheduler) publish(ctx context.Context, msgs []store.Message) {
	if len(msgs) > 0 {
		s.pub.Publish(ctx, msgs)
		s.assignments.Add(float64(len(msgs)))
	}
}

// pick prefers connected workers, then the one with most free slots, then the
// lowest id, so that load spreads and ties are stable.
func pick(cs []*candidate) *candidate {
	var best *candidate
	for _, c := range cs {
		if c.free <= 0 {
			continue
		}
		if best == nil || (c.connected && !best.connected) ||
			(c.connected == best.connected && (c.free > best.free || (c.free == best.free && c.w.ID < best.w.ID))) {
			best = c
		}
	}
	return best
}

// assignment makes the record of one assignment and its message.
func (s *Scheduler) assignment(it store.QueueItem, c *candidate, dev *poolDevice) store.Assignment {
	a := schemas.Assignment{WorkRequestID: it.ID, Attempt: it.Attempt, WorkerID: c.w.ID}
	if dev != nil {
		a.Device = dev.d.Name
	}
	payload, err := json.Marshal(a)
	if err != nil {
		panic(err) // a struct of ints and a string always marshals
	}
	// The message id de-duplicates republications of this one assignment
	// (the outbox relay), never a later assignment of the same request and
	// attempt (after a withdrawal), hence the nonce; it is stored with the
	// outbox row, so every republication carries the same id.
	return store.Assignment{
		ID: it.ID, Attempt: it.Attempt, WorkerID: c.w.ID, Limit: c.w.EffectiveConcurrency(),
		Msg: store.Message{
			Subject: s.names.AssignSubject(c.w.ID),
			MsgID:   fmt.Sprintf("assign-%d-%d-%d-%s", it.ID, it.Attempt, c.w.ID, nonce()),
			Payload: string(payload),
		},
	}
}

// assignDevice assigns a job or special task with the device it leases.
func (s *Scheduler) assignDevice(ctx context.Context, it store.QueueItem, c *candidate, dev *poolDevice) (store.Message, error) {
	a := s.assignment(it, c, dev)
	m, err := s.st.AssignDevice(ctx, a.ID, a.Attempt, a.WorkerID, a.Limit, dev.d.ID, a.Msg)
	if err == nil {
		s.log.Debug().Int64("work_request", it.ID).Str("worker", c.w.Name).Str("device", dev.d.Name).Msg("assigned")
	}
	return m, err
}

// requirements returns the cached task and requirements of a shape, reading
// the sample request's task data the first time.
func (s *Scheduler) requirements(ctx context.Context, sh store.Shape) (shapeReq, error) {
	s.mu.Lock()
	sr, ok := s.reqs[sh.Shape]
	s.mu.Unlock()
	if ok {
		return sr, sr.err
	}
	task, err := s.reg.Get(sh.TaskName)
	if err != nil {
		sr = shapeReq{err: fmt.Errorf("task %s is not registered on this server", sh.TaskName)}
	} else {
		wr, err := s.st.WorkRequest(ctx, sh.SampleID)
		if err != nil {
			return shapeReq{}, err
		}
		req, err := task.Requirements(json.RawMessage(wr.TaskData))
		if err != nil {
			sr = shapeReq{err: fmt.Errorf("cannot read requirements: %v", err)}
		} else {
			sr = shapeReq{task: task, req: req}
		}
	}
	s.mu.Lock()
	if len(s.reqs) > 100000 {
		s.reqs = map[string]shapeReq{}
	}
	s.reqs[sh.Shape] = sr
	s.mu.Unlock()
	return sr, sr.err
}

// orNothing names a special task for a waiting reason, "" as a ready
// device.
func orNothing(task string) string {
	if task == "" {
		return "ready"
	}
	return task
}

func nonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b)
}

func noWorkerReason(enabled int, refusals map[string][]string) string {
	if enabled == 0 {
		return "no enabled worker"
	}
	msgs := make([]string, 0, len(refusals))
	for m := range refusals {
		msgs = append(msgs, m)
	}
	sort.Strings(msgs)
	parts := make([]string, 0, 3)
	for i, m := range msgs {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more reasons", len(msgs)-3))
			break
		}
		names := refusals[m]
		who := strings.Join(names, ", ")
		if len(names) > 3 {
			who = fmt.Sprintf("%s and %d more", strings.Join(names[:3], ", "), len(names)-3)
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", m, who))
	}
	return "no worker can run it: " + strings.Join(parts, "; ")
}

func busyReason(elig []*candidate) string {
	online := 0
	for _, c := range elig {
		if c.connected {
			online++
		}
	}
	if online == 0 {
		return fmt.Sprintf("all %d matching workers are offline", len(elig))
	}
	return fmt.Sprintf("all %d matching workers are busy (%d online)", len(elig), online)
}
