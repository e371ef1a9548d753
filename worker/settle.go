package worker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/tasks/runner"
	"github.com/kiln-ci/kiln/worker/journal"
)

// settleTimeout bounds what a stopping worker still tells the server about
// a run (a result, a hand-back, a kill confirmation); what it could not
// tell stays in the journal for its next start.
const settleTimeout = 10 * time.Second

// settling returns the context in which to tell the server how a run ended:
// ctx while the worker runs; once ctx has ended (the worker stops), a
// fresh one bounded by settleTimeout.
func (w *Worker) settling(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() == nil {
		return ctx, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
}

// runRecord is the journal entry of one run, written through on every
// change.
type runRecord struct {
	w   *Worker
	log zerolog.Logger
	mu  sync.Mutex
	e   journal.Entry
}

func (w *Worker) record(e journal.Entry, log zerolog.Logger) *runRecord {
	return &runRecord{w: w, log: log, e: e}
}

// write stores the entry as it is.
func (r *runRecord) write() { r.update(func(*journal.Entry) {}) }

// update changes the entry and stores it. A journal that cannot be written
// does not stop the run; it only loses what the journal is for.
func (r *runRecord) update(change func(*journal.Entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(&r.e)
	if err := r.w.journal.Write(r.e); err != nil {
		r.log.Error().Err(err).Msg("cannot journal the run: should the worker die now, what it started may be left running and its result lost")
	}
}

// drop removes the entry: the server knows how the run ended.
func (r *runRecord) drop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.w.journal.Remove(r.e.WorkRequest, r.e.Attempt); err != nil {
		r.log.Warn().Err(err).Msg("cannot remove the run from the journal")
	}
}

// report sends a run's result until the server accepts it or refuses it
// for good. The result is journaled first: should ctx end (the worker
// stops) before the server has it, it stays there and the next start sends
// it. A finished result is never thrown away.
func (w *Worker) report(ctx context.Context, rec *runRecord, report schemas.WorkRequestCompleted) {
	rec.update(func(e *journal.Entry) { e.Result = &report })
	id := rec.e.WorkRequest
	err := w.retry(ctx, "report result", func() error {
		err := w.api.CompleteWorkRequest(ctx, id, report)
		if code := client.StatusCode(err); code == http.StatusUnauthorized || code == http.StatusConflict || code == http.StatusNotFound {
			return permanent(err)
		}
		return err
	})
	switch {
	case err == nil:
		rec.log.Info().Str("result", string(report.Result)).Msg("result accepted by the server")
		rec.drop()
	case ctx.Err() != nil:
		rec.log.Warn().Str("journal", w.journal.Dir()).
			Msg("worker stopping before the server accepted the result: it stays in the journal and the next start sends it")
	default:
		rec.log.Warn().Err(err).Msg("result refused by the server")
		rec.drop()
	}
}

// handBack tells the server that this worker lost the run (it was stopped
// before it ended, or an earlier life of the worker ran it): the server
// retries it at once. Until the server has heard it, the entry stays in
// the journal.
func (w *Worker) handBack(ctx context.Context, rec *runRecord, reason string) {
	id, attempt := rec.e.WorkRequest, rec.e.Attempt
	err := w.retry(ctx, "hand the run back", func() error {
		err := w.api.AbandonWorkRequest(ctx, id, attempt, reason)
		if code := client.StatusCode(err); code == http.StatusUnauthorized || code == http.StatusConflict || code == http.StatusNotFound {
			return permanent(err)
		}
		return err
	})
	switch {
	case err == nil:
		rec.log.Info().Msg("run handed back: the server runs the request again")
		rec.drop()
	case ctx.Err() != nil:
		rec.log.Warn().Str("journal", w.journal.Dir()).
			Msg("worker stopping before the server took the run back: the next start tells it (or its lease expires)")
	default:
		// Not this worker's any more, or not this attempt: nothing to do.
		rec.log.Info().Err(err).Msg("the server did not take the run back: it is not this worker's any more")
		rec.drop()
	}
}

// killLeftovers kills what the runs of an earlier life of the worker left
// running, as its journal records them, and removes their work directories.
// It needs no server; it returns the entries, to settle with the server.
func (w *Worker) killLeftovers() []journal.Entry {
	entries, err := w.journal.Entries()
	if err != nil {
		w.log.Error().Err(err).Msg("journal entries that cannot be read were moved aside; what those runs left, if anything, is not known")
	}
	for _, e := range entries {
		log := w.log.With().Int64("work_request", e.WorkRequest).Int("attempt", e.Attempt).Str("task", e.Task).Logger()
		killed := 0
		for _, p := range e.Processes {
			n, err := runner.KillLeftovers(p)
			killed += n
			if err != nil {
				log.Error().Err(err).Int("pgid", p.PGID).Str("cgroup", p.Cgroup).Msg("killing what an earlier life of the worker left")
			}
		}
		dir := filepath.Join(w.cfg.WorkDir, fmt.Sprintf("%d-%d", e.WorkRequest, e.Attempt))
		if err := os.RemoveAll(dir); err != nil {
			log.Warn().Err(err).Msg("remove work directory")
		}
		switch {
		case killed > 0:
			log.Warn().Int("killed", killed).Msg("an earlier life of the worker left this run's processes running: killed")
		case e.Result == nil && !e.Aborted:
			log.Info().Msg("an earlier life of the worker ran this; nothing of it is left running")
		}
	}
	return entries
}

// settle tells the server how the runs of an earlier life ended: a result
// the server did not accept yet is sent again, an abort is confirmed, and
// a run that ended with the worker is handed back, so that the server runs
// it again at once. It returns when all are settled or ctx ends; the
// entries of those not settled stay in the journal.
func (w *Worker) settle(ctx context.Context, entries []journal.Entry) {
	if len(entries) == 0 {
		return
	}
	w.log.Info().Int("runs", len(entries)).Msg("settling the runs of an earlier life with the server before taking work")
	var wg sync.WaitGroup
	for _, e := range entries {
		log := w.log.With().Int64("work_request", e.WorkRequest).Int("attempt", e.Attempt).Str("task", e.Task).Logger()
		rec := w.record(e, log)
		wg.Go(func() {
			switch {
			case e.Result != nil:
				log.Info().Str("result", string(e.Result.Result)).Msg("sending the result of an earlier life again")
				w.runsMu.Lock()
				w.reporting[e.WorkRequest] = e.Attempt
				w.runsMu.Unlock()
				w.report(ctx, rec, *e.Result)
				w.runsMu.Lock()
				delete(w.reporting, e.WorkRequest)
				w.runsMu.Unlock()
			case e.Aborted:
				if w.confirmKill(ctx, e.WorkRequest, e.Attempt, log) {
					rec.drop()
				}
			default:
				w.handBack(ctx, rec, "kiln-worker restarted: the run ended with its earlier life")
			}
		})
	}
	wg.Wait()
	if ctx.Err() == nil {
		w.log.Info().Msg("the runs of the earlier life are settled")
	}
}
