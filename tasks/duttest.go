package tasks

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
)

// KeyDeviceTypes (Kiln) lists the device types a lab worker declares.
const KeyDeviceTypes = "kiln:device_types"

// TestResultsCategory is the category of a dut-test run's parsed results.
const TestResultsCategory = "kiln:test-results"

// ErrInfrastructure marks errors of the lab, not of the test: the device
// did not answer, the connection dropped, a power command failed. Such a
// request ends in error, never failure, and its device goes to repair.
var ErrInfrastructure = errors.New("infrastructure")

// DeviceMatch is what a request needs of a device.
type DeviceMatch struct {
	Name   string            `json:"name,omitempty"`
	Type   string            `json:"type,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Matches reports whether a device with this name, type and labels will do.
func (m DeviceMatch) Matches(name, typ string, labels map[string]string) bool {
	if m.Name != "" && m.Name != name || m.Type != "" && m.Type != typ {
		return false
	}
	for k, v := range m.Labels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// String describes the match for waiting reasons.
func (m DeviceMatch) String() string {
	var parts []string
	if m.Name != "" {
		parts = append(parts, "device "+m.Name)
	}
	if m.Type != "" {
		parts = append(parts, "type "+m.Type)
	}
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+m.Labels[k])
	}
	return strings.Join(parts, ", ")
}

// DeviceNeeds is implemented by tasks that run on a device under test: the
// scheduler gives such a request only to a worker with a free, healthy
// matching device and leases that device to it.
type DeviceNeeds interface {
	NeedsDevice(req Requirements) DeviceMatch
}

// DUTTest runs a test on a device under test over SSH: copy the bundle,
// run the command with its output in the live log, read the results (exit
// code, TAP or JUnit XML) and upload them as kiln:test-results.
type DUTTest struct{}

// Name implements Task.
func (DUTTest) Name() string { return "dut-test" }

// Version implements Task.
func (DUTTest) Version() int { return 1 }

// Type implements Task.
func (DUTTest) Type() Type { return TypeWorker }

// AnalyzeWorker implements Task: whether the worker has an SSH client.
func (DUTTest) AnalyzeWorker(context.Context, Host) schemas.Metadata {
	return schemas.Metadata{keySSHAvailable: commandAvailable("ssh")}
}

type dutTestData struct {
	DeviceType   string            `json:"device_type"`
	Labels       map[string]string `json:"labels"`
	Device       string            `json:"device"`
	Bundle       int64             `json:"bundle"`
	Script       string            `json:"script"`
	Command      string            `json:"command"`
	ResultFormat string            `json:"result_format"`
	ResultsFile  string            `json:"results_file"`
	// Provision is decoded here, though the scheduler reads it with
	// schemas.JobProvision, so that task data it could not read fails.
	Provision *schemas.DeviceProvision `json:"provision"`
}

func parseDUTTestData(data json.RawMessage) (dutTestData, error) {
	var d dutTestData
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("dut-test task data: %w", err)
	}
	if d.Command == "" {
		if d.Script == "" {
			return d, errors.New("dut-test task data: give a command, or a script")
		}
		d.Command = "sh run.sh"
	}
	if d.ResultFormat == "" {
		d.ResultFormat = "exit-code"
	}
	if d.ResultsFile == "" && d.ResultFormat == "junit" {
		d.ResultsFile = "results.xml"
	}
	if strings.Contains(d.ResultsFile, "..") {
		return d, errors.New("dut-test task data: results_file must stay in the run's directory")
	}
	return d, nil
}

// InputArtifacts implements Inputs: the bundle and the provision's
// artifact, of any category, must exist when the request is made.
func (DUTTest) InputArtifacts(data json.RawMessage) ([]InputArtifact, error) {
	d, err := parseDUTTestData(data)
	if err != nil {
		return nil, err
	}
	var ins []InputArtifact
	if d.Bundle != 0 {
		ins = append(ins, InputArtifact{Pointer: "/bundle", ID: d.Bundle})
	}
	if p := schemas.JobProvision(string(data)); p != nil {
		ins = append(ins, InputArtifact{Pointer: "/provision/artifact", ID: p.Artifact})
	}
	return ins, nil
}

// Requirements implements Task: the device the request needs.
func (DUTTest) Requirements(data json.RawMessage) (Requirements, error) {
	d, err := parseDUTTestData(data)
	if err != nil {
		return Requirements{}, err
	}
	m, err := json.Marshal(DeviceMatch{Name: d.Device, Type: d.DeviceType, Labels: d.Labels})
	if err != nil {
		return Requirements{}, err
	}
	return Requirements{Extra: map[string]string{"device": string(m)}}, nil
}

// NeedsDevice implements DeviceNeeds.
func (DUTTest) NeedsDevice(req Requirements) DeviceMatch {
	var m DeviceMatch
	_ = json.Unmarshal([]byte(req.Extra["device"]), &m)
	return m
}

// CanRunOn implements Task: the base rules and an SSH client; which
// devices are free is the scheduler's business.
func (t DUTTest) CanRunOn(req Requirements, md schemas.Metadata) error {
	if err := BaseCanRunOn(t, req, md); err != nil {
		return err
	}
	if MetaString(md, keySSHAvailable) != "true" {
		return refuse("the worker has no ssh client (%s is not true)", keySSHAvailable)
	}
	return nil
}

// Execute implements Task.
func (DUTTest) Execute(ctx context.Context, data json.RawMessage, env Env) (schemas.Result, error) {
	d, err := parseDUTTestData(data)
	if err != nil {
		return schemas.ResultError, err
	}
	if env.Device == nil || env.Device.SSH == nil {
		return schemas.ResultError, fmt.Errorf("%w: the worker leased no SSH device to this run", ErrInfrastructure)
	}
	return RunProgram(ctx, env, &dutRun{d: d, dev: *env.Device, runCtx: ctx})
}

// dutRun is one dut-test run.
type dutRun struct {
	d      dutTestData
	dev    Device
	runCtx context.Context
	// dir is the run's directory on the device, relative to the login
	// user's home.
	dir    string
	conn   *deviceConn
	inputs []int64
	// results is the local copy of the results file; parsed says that
	// summary and summaryErr hold what it says.
	results    string
	parsed     bool
	summary    TestSummary
	summaryErr error
	// lost is set when the connection failed during the run.
	lost bool
}

// remote runs a short command on the device (deviceConn.remote).
func (r *dutRun) remote(ctx context.Context, stdin io.Reader, remote string) ([]byte, error) {
	if r.conn == nil {
		return nil, fmt.Errorf("%w: no connection to device %s", ErrInfrastructure, r.dev.Name)
	}
	return r.conn.remote(ctx, stdin, remote)
}

// FetchInput implements Program: the bundle.
func (r *dutRun) FetchInput(ctx context.Context, env Env, dir string) ([]int64, error) {
	if r.d.Bundle == 0 {
		return nil, nil
	}
	if env.Artifacts == nil {
		return nil, errors.New("dut-test needs the artifact store for its bundle")
	}
	if err := env.Artifacts.Download(ctx, r.d.Bundle, dir); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	r.inputs = []int64{r.d.Bundle}
	return r.inputs, nil
}

// Configure implements Program: check that the device answers (switching
// it on when it does not), and copy the bundle and the script to its run
// directory.
func (r *dutRun) Configure(ctx context.Context, env Env, dir string) error {
	conn, err := newDeviceConn(r.dev, env.WorkDir, sayTo(env.Output, "kiln: "))
	if err != nil {
		return err
	}
	r.conn = conn
	if r.d.Script != "" {
		if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(r.d.Script), 0o755); err != nil {
			return err
		}
	}
	r.dir = fmt.Sprintf("kiln-run-%d-%d", env.WorkRequestID, env.Attempt)
	if err := r.conn.reach(ctx); err != nil {
		return err
	}
	var bundle bytes.Buffer
	if err := tarDir(&bundle, dir); err != nil {
		return fmt.Errorf("pack the bundle: %w", err)
	}
	_, err = r.remote(ctx, &bundle, "rm -rf "+r.dir+" && mkdir -p "+r.dir+" && tar -C "+r.dir+" -xf -")
	return err
}

// tarDir writes the regular files below dir to w as a tar stream.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// CommandLine implements Program: the command runs on the device in a
// session of its own whose id it records, so that an abort can kill it
// all there (sessionLine).
func (r *dutRun) CommandLine(Env, string, string) ([]string, error) {
	return r.conn.ssh(sessionLine(r.dir, r.d.Command, true)), nil
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'" }

// Finalize implements Finalizer: after an abort or a timeout, kill what
// the command left on the device, then power the device off.
func (r *dutRun) Finalize(ctx context.Context, env Env) error {
	if r.dir == "" || r.runCtx.Err() == nil {
		return nil
	}
	var errs []error
	if err := r.conn.killSession(ctx, r.dir, env.Grace, false); err != nil {
		errs = append(errs, fmt.Errorf("kill the test on the device: %w", err))
	}
	if err := PowerAction(ctx, r.dev, "off"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckOutput implements Program.
func (r *dutRun) CheckOutput(Env, string) []string { return nil }

// Succeeded implements Program (Judge decides).
func (r *dutRun) Succeeded(code int, execDir string) bool {
	res, _ := r.Judge(code, execDir)
	return res == schemas.ResultSuccess
}

// Judge implements Judge: ssh's 255 is a lost device; otherwise the
// results decide.
func (r *dutRun) Judge(code int, execDir string) (schemas.Result, error) {
	if code == 255 {
		r.lost = true
		return schemas.ResultError, fmt.Errorf("%w: the connection to device %s was lost during the test", ErrInfrastructure, r.dev.Name)
	}
	if r.d.ResultFormat == "exit-code" {
		if code == 0 {
			return schemas.ResultSuccess, nil
		}
		return schemas.ResultFailure, nil
	}
	sum, err := r.parseResults(execDir)
	if err != nil {
		return schemas.ResultFailure, nil
	}
	if sum.Failed > 0 || code != 0 {
		return schemas.ResultFailure, nil
	}
	return schemas.ResultSuccess, nil
}

// fetchResults copies the results file from the device.
func (r *dutRun) fetchResults(execDir string) (string, error) {
	local := filepath.Join(execDir, "results")
	if r.d.ResultsFile == "" {
		// TAP on the command's output, as the debug log kept it.
		data, err := os.ReadFile(filepath.Join(filepath.Dir(execDir), "debug", CmdOutputLog))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(local, data, 0o644); err != nil {
			return "", err
		}
	} else {
		out, err := r.remote(r.runCtx, nil, "cat "+shQuote(r.dir+"/"+r.d.ResultsFile))
		if err != nil {
			return "", fmt.Errorf("results file %s: %w", r.d.ResultsFile, err)
		}
		if err := os.WriteFile(local, out, 0o644); err != nil {
			return "", err
		}
	}
	return local, nil
}

// parseResults fetches and reads the results once: Judge and Upload both
// need them, and a second fetch would ask the device again.
func (r *dutRun) parseResults(execDir string) (TestSummary, error) {
	if !r.parsed {
		r.parsed = true
		r.summary, r.summaryErr = r.readResults(execDir)
	}
	return r.summary, r.summaryErr
}

func (r *dutRun) readResults(execDir string) (TestSummary, error) {
	path, err := r.fetchResults(execDir)
	if err != nil {
		return TestSummary{}, err
	}
	r.results = path
	f, err := os.Open(path)
	if err != nil {
		return TestSummary{}, err
	}
	defer f.Close()
	if r.d.ResultFormat == "junit" {
		return ParseJUnit(f)
	}
	return ParseTAP(f)
}

// Upload implements Program: the parsed results and the raw results file,
// and the run directory on the device goes.
func (r *dutRun) Upload(ctx context.Context, env Env, execDir string, _ bool) error {
	if r.dir == "" || r.lost {
		return nil
	}
	defer func() {
		if r.runCtx.Err() == nil {
			_, _ = r.remote(ctx, nil, "rm -rf "+r.dir)
		}
	}()
	if r.d.ResultFormat == "exit-code" || r.runCtx.Err() != nil {
		return nil
	}
	sum, err := r.parseResults(execDir)
	data := map[string]any{"format": r.d.ResultFormat, "device": r.dev.Name}
	files := map[string]string{}
	if err != nil {
		data["error"] = err.Error()
	} else {
		data["total"], data["passed"], data["failed"], data["skipped"], data["cases"] = sum.Total(), sum.Passed, sum.Failed, sum.Skipped, sum.Cases
		name := "results.tap"
		if r.d.ResultFormat == "junit" {
			name = "results.xml"
		}
		files[name] = r.results
	}
	_, err = env.Artifacts.Upload(ctx, NewArtifact{Category: TestResultsCategory, Data: data, Files: files, RelatesTo: r.inputs})
	return err
}
