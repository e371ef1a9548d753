package cli

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
)

func TestPrintYAMLKeepsJSONNamesAndOrder(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	v := struct {
		Z        string          `json:"z"`
		A        int             `json:"a"`
		Status   schemas.Status  `json:"status"`
		Tricky   string          `json:"tricky"`
		When     time.Time       `json:"when"`
		Missing  *int            `json:"missing"`
		TaskData json.RawMessage `json:"task_data"`
		Empty    []int64         `json:"empty"`
		Output   string          `json:"output"`
	}{
		Z: "last letter", A: 1, Status: schemas.StatusRunning, Tricky: "true", When: created,
		TaskData: json.RawMessage(`{"sleep_seconds":1.5,"result":true}`), Empty: []int64{},
		Output: "line 1\nline 2\n",
	}
	var b bytes.Buffer
	require.NoError(t, printYAML(&b, v))
	require.Equal(t, `z: last letter
a: 1
status: running
tricky: "true"
when: "2025-01-02T03:04:05Z"
missing: null
task_data:
  sleep_seconds: 1.5
  result: true
empty: []
output: |
  line 1
  line 2
`, b.String())
}

func TestYAMLWriterSeparatesDocuments(t *testing.T) {
	var b bytes.Buffer
	y := newYAMLWriter(&b)
	require.NoError(t, y.write(created{Result: "success", Message: "Work request registered: /debusine/System/work-request/5/", WorkRequestID: 5}))
	require.Equal(t, "result: success\nmessage: 'Work request registered: /debusine/System/work-request/5/'\nwork_request_id: 5\n", b.String(),
		"the first document is out before the second is written")
	require.NoError(t, y.write(newResults[int](nil)))
	require.NoError(t, y.close())
	require.Contains(t, b.String(), "\n---\nresults: []\n")
}
