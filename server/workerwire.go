package server

import (
	"database/sql"
	"encoding/json"
	"time"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

func nullTime(n sql.NullTime) *time.Time {
	if !n.Valid {
		return nil
	}
	t := n.Time.UTC()
	return &t
}

func (s *Server) workerToWire(wk store.Worker) schemas.Worker {
	static, dynamic := schemas.Metadata{}, schemas.Metadata{}
	_ = json.Unmarshal([]byte(wk.StaticMetadata), &static)
	_ = json.Unmarshal([]byte(wk.DynamicMetadata), &dynamic)
	connected := wk.ConnectedAt.Valid && wk.LastSeenAt.Valid && time.Since(wk.LastSeenAt.Time) < s.cfg.HeartbeatTimeout
	return schemas.Worker{
		ID: wk.ID, Name: wk.Name, WorkerType: wk.WorkerType, Enabled: wk.Enabled,
		Concurrency: wk.EffectiveConcurrency(), Running: wk.Active, Connected: connected,
		RegisteredAt: wk.RegisteredAt.UTC(), ConnectedAt: nullTime(wk.ConnectedAt), LastSeenAt: nullTime(wk.LastSeenAt),
		StaticMetadata: static, DynamicMetadata: dynamic, DynamicMetadataUpdatedAt: nullTime(wk.DynamicMetadataUpdatedAt),
	}
}
