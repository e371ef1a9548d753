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
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

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
	return schemas.Metadata{"dut-test:ssh_available": commandAvailable("ssh")}
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
	if MetaString(md, "dut-test:ssh_available") != "true" {
		return refuse("the worker has no ssh client (dut-test:ssh_available is not true)")
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
	dir        string
	knownHosts string
	inputs     []int64
	// results is the local copy of the results file; parsed says that
	// summary and summaryErr hold what it says.
	results    string
	parsed     bool
	summary    TestSummary
	summaryErr error
	// lost is set when the connection failed during the run.
	lost bool
}

// ssh returns the ssh command line that runs remote on the device.
func (r *dutRun) ssh(remote string) []string {
	s := r.dev.SSH
	return []string{"ssh", "-i", s.KeyFile, "-p", strconv.Itoa(s.Port),
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + r.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
		"-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
		s.User + "@" + s.Host, remote}
}

// remote runs a short command on the device; failures to connect are
// infrastructure errors.
func (r *dutRun) remote(ctx context.Context, stdin io.Reader, remote string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	argv := r.ssh(remote)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() != 255 {
			return out, fmt.Errorf("%s: exit %d: %s", remote, ee.ExitCode(), strings.TrimSpace(stderr.String()))
		}
		return out, fmt.Errorf("%w: device %s does not answer over SSH: %v: %s", ErrInfrastructure, r.dev.Name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
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

// Configure implements Program: check that the device answers, and copy
// the bundle and the script to its run directory.
func (r *dutRun) Configure(ctx context.Context, env Env, dir string) error {
	s := r.dev.SSH
	host := s.Host
	if s.Port != 22 {
		host = "[" + s.Host + "]:" + strconv.Itoa(s.Port)
	}
	r.knownHosts = filepath.Join(env.WorkDir, "known_hosts")
	if err := os.WriteFile(r.knownHosts, []byte(host+" "+s.KnownHostKey+"\n"), 0o600); err != nil {
		return err
	}
	if r.d.Script != "" {
		if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(r.d.Script), 0o755); err != nil {
			return err
		}
	}
	r.dir = fmt.Sprintf("kiln-run-%d-%d", env.WorkRequestID, env.Attempt)
	if err := r.verify(ctx, env); err != nil {
		return err
	}
	var bundle bytes.Buffer
	if err := tarDir(&bundle, dir); err != nil {
		return fmt.Errorf("pack the bundle: %w", err)
	}
	_, err := r.remote(ctx, &bundle, "rm -rf "+r.dir+" && mkdir -p "+r.dir+" && tar -C "+r.dir+" -xf -")
	return err
}

// verify checks that the device answers as itself (its known host key)
// before anything runs. One that does not is switched on, or reset, and
// given bootTimeout to come up: the previous job may have powered it off.
func (r *dutRun) verify(ctx context.Context, env Env) error {
	_, err := r.remote(ctx, nil, "true")
	if err == nil || !errors.Is(err, ErrInfrastructure) {
		return err
	}
	action := "on"
	if !r.dev.HasPower("on") {
		action = "reset"
	}
	if !r.dev.HasPower(action) {
		return err
	}
	fmt.Fprintf(env.Output, "kiln: device %s does not answer; power %s\n", r.dev.Name, action)
	if perr := PowerAction(ctx, r.dev, action); perr != nil {
		return perr
	}
	deadline := time.Now().Add(bootTimeout)
	for {
		if _, err = r.remote(ctx, nil, "true"); err == nil || !errors.Is(err, ErrInfrastructure) {
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("after power %s: %w", action, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// bootTimeout is how long a device gets to answer after a power action.
const bootTimeout = 2 * time.Minute

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
// all there.
func (r *dutRun) CommandLine(Env, string, string) ([]string, error) {
	remote := "cd " + r.dir + " && exec setsid sh -c " + shQuote(`echo $$ > .kiln-pgid; exec sh -c "$1"`) + " kiln " + shQuote(r.d.Command)
	return r.ssh(remote), nil
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
	grace := max(int(env.Grace/time.Second), 1)
	kill := fmt.Sprintf("p=$(cat %s/.kiln-pgid 2>/dev/null) && kill -TERM -- -$p 2>/dev/null; sleep %d; [ -n \"$p\" ] && kill -KILL -- -$p 2>/dev/null; true", r.dir, grace)
	if _, err := r.remote(ctx, nil, kill); err != nil {
		errs = append(errs, fmt.Errorf("kill the test on the device: %w", err))
	}
	if err := PowerAction(ctx, r.dev, "off"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// PowerAction runs a device's power command for action (on, off, reset).
func PowerAction(ctx context.Context, dev Device, action string) error {
	cmdline := dev.Power.Command(action)
	if cmdline == "" {
		return fmt.Errorf("%w: device %s has no power %s command", ErrInfrastructure, dev.Name, action)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", cmdline).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: power %s of device %s: %v: %s", ErrInfrastructure, action, dev.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
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
