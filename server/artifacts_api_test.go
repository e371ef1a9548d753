package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
)

func hexSHA(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestOpenAPIArtifactResponsesConform drives the artifact endpoints of a
// real server and checks every answer against docs/openapi.yaml.
func TestOpenAPIArtifactResponsesConform(t *testing.T) {
	s := newOpenAPITestServer(t)
	k := newConformance(t, s.URL())
	ctx := t.Context()
	st := s.Store()
	alice, err := st.CreateUser(ctx, "alice", "", false)
	require.NoError(t, err)
	user, err := st.CreateUserToken(ctx, alice.ID, "test")
	require.NoError(t, err)
	bob, err := st.CreateUser(ctx, "bob", "", false)
	require.NoError(t, err)
	other, err := st.CreateUserToken(ctx, bob.ID, "test")
	require.NoError(t, err)
	workerToken := store.NewSecret()
	wk, err := st.RegisterWorker(ctx, "builder", "external", workerToken, "")
	require.NoError(t, err)
	require.NoError(t, st.SetWorkerEnabled(ctx, wk.ID, true))
	wr, err := st.CreateWorkRequest(ctx, store.NewWorkRequest{TaskName: "noop", TaskType: "Worker", TaskData: "{}",
		Workspace: "System", CreatedBy: alice.ID, Shape: "manual"})
	require.NoError(t, err)
	_, err = st.Assign(ctx, wr.ID, 1, wk.ID, 10, store.Message{Subject: s.Names().AssignSubject(wk.ID),
		MsgID: "artifact-test", Payload: "{}"})
	require.NoError(t, err)
	otherWR, err := st.CreateWorkRequest(ctx, store.NewWorkRequest{TaskName: "noop", TaskType: "Worker", TaskData: "{}",
		Workspace: "System", CreatedBy: alice.ID, Shape: "manual-2"})
	require.NoError(t, err)

	const (
		create   = "/api/1.0/artifact/"
		get      = "/api/1.0/artifact/{id}/"
		file     = "/api/1.0/artifact/{id}/files/{path}/"
		tarball  = "/api/1.0/artifact/{id}/download/"
		rels     = "/api/1.0/artifact-relation/"
		relation = "/api/1.0/artifact-relation/{id}/"
	)
	expect := func(want int, method, specPath, path, token, body string, hdr ...string) []byte {
		t.Helper()
		code, got := k.do(method, specPath, path, token, body, hdr...)
		require.Equalf(t, want, code, "%s %s: %s", method, path, got)
		return got
	}
	content := "0123456789abcdefghij"
	fileJSON := func(c string) string {
		return fmt.Sprintf(`{"size":%d,"checksums":{"sha256":"%s"},"type":"file"}`, len(c), hexSHA(c))
	}
	body := fmt.Sprintf(`{"category":"test","data":{"k":"v"},"files":{"dir/f.bin":%s,"empty":%s}}`, fileJSON(content), fileJSON(""))

	expect(403, "POST", create, create, "", body)
	expect(400, "POST", create, create, user, `{"category":"test","files":{"../x":`+fileJSON("x")+`}}`)
	expect(400, "POST", create, create, user, `{"category":"test","files":{"x":{"size":1,"checksums":{"md5":"00"},"type":"file","mode":1}}}`)
	expect(400, "POST", create, create, user, `{"files":{}}`)
	expect(400, "POST", create, create, user, `{"category":"t","colour":"red"}`)
	expect(413, "POST", create, create, user, `{"category":"t","files":{"huge":{"size":99999999999999,"checksums":{"sha256":"`+hexSHA("")+`"},"type":"file"}}}`)
	expect(404, "POST", create, create, user, `{"category":"t","workspace":"Elsewhere"}`)
	expect(403, "POST", create, create, user, fmt.Sprintf(`{"category":"t","work_request":%d}`, wr.ID))
	expect(403, "POST", create, create, workerToken, `{"category":"t"}`)
	expect(403, "POST", create, create, workerToken, fmt.Sprintf(`{"category":"t","work_request":%d}`, otherWR.ID))
	expect(400, "POST", create, create, workerToken, `{"category":"t","work_request":999999}`)
	expect(400, "POST", create, create, user, `{"category":"t","expire_at":"next week"}`)
	expect(201, "POST", create, create, user, `{"category":"t","expire_at":"2030-01-01T00:00:00"}`) // debusine's naive form

	var a schemas.Artifact
	require.NoError(t, json.Unmarshal(expect(201, "POST", create, create, user, body), &a))
	require.Equal(t, []string{"dir/f.bin"}, a.FilesToUpload)
	id := "/api/1.0/artifact/" + strconv.FormatInt(a.ID, 10) + "/"
	f := id + "files/dir/f.bin/"
	expect(200, "GET", get, id, user, "")
	expect(200, "GET", get, id, workerToken, "")
	expect(200, "GET", get, strings.TrimSuffix(id, "/"), user, "")
	expect(404, "GET", get, "/api/1.0/artifact/999999/", user, "")
	expect(403, "GET", get, id, "", "")

	// The upload protocol.
	size := strconv.Itoa(len(content))
	expect(403, "PUT", file, f, other, "", "Content-Range", "bytes */"+size)
	expect(404, "PUT", file, id+"files/nope/", user, "", "Content-Range", "bytes */"+size)
	expect(400, "PUT", file, f, user, "", "Content-Range", "bytes */7")
	expect(400, "PUT", file, f, user, "", "Content-Range", "bytes 5-1/"+size)
	expect(206, "PUT", file, f, user, "", "Content-Range", "bytes */"+size)
	expect(409, "GET", file, f, user, "")
	expect(409, "GET", tarball, id+"download/", user, "")
	expect(400, "PUT", file, f, user, content[10:15], "Content-Range", "bytes 10-14/"+size)
	expect(200, "PUT", file, f, user, content[:10], "Content-Range", "bytes 0-9/"+size)
	expect(206, "PUT", file, f, user, "", "Content-Range", "bytes */"+size)
	expect(201, "PUT", file, f, user, content[5:], "Content-Range", "bytes 5-19/"+size)
	expect(200, "PUT", file, f, user, "", "Content-Range", "bytes */"+size)
	expect(201, "PUT", file, f, user, content, "Content-Range", "bytes 0-19/"+size)

	// Downloads.
	require.Equal(t, content, string(expect(200, "GET", file, f, user, "")))
	require.Equal(t, content[2:6], string(expect(206, "GET", file, f, workerToken, "", "Range", "bytes=2-5")))
	expect(206, "GET", file, f, user, "", "Range", "bytes=0-1,4-5")
	expect(416, "GET", file, f, user, "", "Range", "bytes=100-200")
	expect(304, "GET", file, f, user, "", "If-None-Match", `"`+hexSHA(content)+`"`)
	expect(403, "GET", file, f, "", "")
	expect(200, "GET", tarball, id+"download/?archive=tar.gz", user, "")
	expect(200, "GET", tarball, id+"download/", workerToken, "")
	expect(400, "GET", tarball, id+"download/?archive=zip", user, "")

	// Hash mismatch, by the worker for its work request.
	var wa schemas.Artifact
	require.NoError(t, json.Unmarshal(expect(201, "POST", create, create, workerToken,
		fmt.Sprintf(`{"category":"log","work_request":%d,"files":{"log":%s}}`, wr.ID, fileJSON("right"))), &wa))
	require.NotNil(t, wa.WorkRequest)
	wf := "/api/1.0/artifact/" + strconv.FormatInt(wa.ID, 10) + "/files/log/"
	expect(403, "PUT", file, wf, user, "right")
	expect(409, "PUT", file, wf, workerToken, "wrong")
	expect(413, "PUT", file, wf, workerToken, "right and more")
	expect(201, "PUT", file, wf, workerToken, "right")
	ids, err := st.ArtifactIDsForWorkRequest(ctx, wr.ID)
	require.NoError(t, err)
	require.Equal(t, []int64{wa.ID}, ids)

	// Relations.
	relBody := fmt.Sprintf(`{"artifact":%d,"target":%d,"type":"built-using"}`, wa.ID, a.ID)
	expect(400, "POST", rels, rels, user, fmt.Sprintf(`{"artifact":%d,"target":%d,"type":"sibling"}`, wa.ID, a.ID))
	expect(400, "POST", rels, rels, user, fmt.Sprintf(`{"artifact":%d,"target":999999,"type":"extends"}`, wa.ID))
	expect(400, "POST", rels, rels, user, fmt.Sprintf(`{"artifact":%d,"target":%d,"type":"extends"}`, a.ID, a.ID))
	var rel schemas.ArtifactRelation
	require.NoError(t, json.Unmarshal(expect(201, "POST", rels, rels, workerToken, relBody), &rel))
	expect(200, "POST", rels, rels, user, relBody)
	expect(200, "GET", rels, rels+"?artifact="+strconv.FormatInt(wa.ID, 10), user, "")
	expect(200, "GET", rels, rels+"?target_artifact="+strconv.FormatInt(a.ID, 10), workerToken, "")
	expect(400, "GET", rels, rels, user, "")
	expect(400, "GET", rels, rels+"?artifact=x", user, "")
	expect(404, "GET", rels, rels+"?artifact=999999", user, "")
	relPath := rels + strconv.FormatInt(rel.ID, 10) + "/"
	expect(403, "DELETE", relation, relPath, other, "")
	expect(204, "DELETE", relation, relPath, workerToken, "")
	expect(404, "DELETE", relation, relPath, user, "")

	// An incomplete artifact cannot be related.
	var inc schemas.Artifact
	require.NoError(t, json.Unmarshal(expect(201, "POST", create, create, user,
		`{"category":"t","files":{"x":`+fileJSON("x")+`}}`), &inc))
	expect(400, "POST", rels, rels, user, fmt.Sprintf(`{"artifact":%d,"target":%d,"type":"extends"}`, inc.ID, a.ID))
}
