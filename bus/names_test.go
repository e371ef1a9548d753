package bus

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLogSender(t *testing.T) {
	n, err := NewNames("kiln-a")
	require.NoError(t, err)
	require.Equal(t, int64(7), n.LogSender(n.LogSubject(7, 42)))
	for _, s := range []string{"kiln-a.log.x.42", "kiln-b.log.7.42", "kiln-a.heartbeat.7", "kiln-a.log.", ""} {
		require.Zero(t, n.LogSender(s), s)
	}
}

func TestWorkerPermissionsStayOnTheWorkersOwnSubjects(t *testing.T) {
	n, err := NewNames("kiln")
	require.NoError(t, err)
	p := n.WorkerPermissions(3)
	require.Equal(t, []string{"_INBOX.kiln-worker-3.>"}, p.Subscribe.Allow)
	require.Contains(t, p.Publish.Allow, "kiln.heartbeat.3")
	require.Contains(t, p.Publish.Allow, "kiln.log.3.*")
	require.Contains(t, p.Publish.Allow, "$JS.API.CONSUMER.CREATE.KILN_WORKERS.worker-3-assign.kiln.worker.3.assign")
	for _, s := range p.Publish.Allow {
		require.NotContains(t, s, "4", "worker 3 may publish %s", s)
	}
}
