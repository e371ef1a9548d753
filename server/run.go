package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-ci/kiln/client/cli"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/worker"
)

// Run starts the server and, with cfg.Dev, a local worker; it returns when
// ctx ends and everything has stopped.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	done := make(chan error, 1)
	if s.cfg.Dev {
		clientINI, err := s.setupDev(ctx)
		if err != nil {
			return err
		}
		go func() {
			done <- worker.Run(ctx, worker.Config{
				APIURL:              s.APIURL(),
				TokenFile:           filepath.Join(s.cfg.DataDir, "worker", "token"),
				ActivationTokenFile: filepath.Join(s.cfg.DataDir, "worker", "activation-token"),
				Name:                "dev-worker",
				Concurrency:         2,
				Logger:              s.log.With().Str("component", "worker").Logger(),
				Registry:            s.cfg.Registry,
			})
		}()
		fmt.Fprintf(os.Stderr, "\nKiln is running at %s (API %s)\nClient configuration: %s\nTry:\n  %s --config-file %s create-work-request noop --data - --wait <<< '{\"result\": true}'\n\n",
			s.URL(), s.APIURL(), clientINI, kilnCommand(), clientINI)
	}
	<-ctx.Done()
	s.log.Info().Msg("shutting down")
	if s.cfg.Dev {
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn().Err(err).Msg("local worker")
		}
	}
	return nil
}

// setupDev makes a single node usable at once: a "dev" admin user whose token
// is written to DataDir/client.ini (kept across restarts while it still
// works), and a pre-created, enabled worker record with an activation token
// for the local worker.
func (s *Server) setupDev(ctx context.Context) (string, error) {
	st := s.store
	path, err := filepath.Abs(filepath.Join(s.cfg.DataDir, "client.ini"))
	if err != nil {
		return "", err
	}
	if sc, err := cli.LoadConfig(path, ""); err == nil {
		if _, err := st.UserForToken(ctx, sc.Token); err == nil && sc.APIURL == s.APIURL() {
			return path, s.devWorker(ctx)
		}
	}
	u, err := st.UserByName(ctx, "dev")
	if errors.Is(err, store.ErrNotFound) {
		u, err = st.CreateUser(ctx, "dev", "", true)
	}
	if err != nil {
		return "", fmt.Errorf("dev user: %w", err)
	}
	tok, err := st.CreateUserToken(ctx, u.ID, "kiln-server --dev")
	if err != nil {
		return "", err
	}
	if err := cli.WriteConfig(path, "local", cli.ServerConfig{APIURL: s.APIURL(), Scope: s.cfg.Scope, Token: tok}); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, s.devWorker(ctx)
}

func (s *Server) devWorker(ctx context.Context) error {
	dir := filepath.Join(s.cfg.DataDir, "worker")
	if _, err := os.Stat(filepath.Join(dir, "token")); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	name := "dev-worker"
	wk, err := s.store.CreateWorker(ctx, name, "external")
	for i := 2; errors.Is(err, store.ErrConflict) && i < 100; i++ {
		wk, err = s.store.CreateWorker(ctx, fmt.Sprintf("%s-%d", name, i), "external")
	}
	if err != nil {
		return fmt.Errorf("dev worker: %w", err)
	}
	act, err := s.store.CreateActivationToken(ctx, wk.ID)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "activation-token"), []byte(strings.TrimSpace(act)+"\n"), 0o600)
}

// kilnCommand names the kiln client as the user can run it: the binary next
// to this one when there is one (bin/kiln after make build), else "kiln".
func kilnCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "kiln"
	}
	p := filepath.Join(filepath.Dir(exe), "kiln")
	if _, err := os.Stat(p); err != nil {
		return "kiln"
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return p
}
