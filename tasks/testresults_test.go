package tasks

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseTAP(t *testing.T) {
	s, err := ParseTAP(strings.NewReader(`cmd: ssh ...
TAP version 13
1..5
ok 1 - boots
not ok 2 - network is up
# a comment
ok 3 # SKIP no camera
not ok 4 - flaky thing # TODO fix later
ok 5 - shuts down
`))
	require.NoError(t, err)
	require.Equal(t, 3, s.Passed)
	require.Equal(t, 1, s.Failed)
	require.Equal(t, 1, s.Skipped)
	require.Equal(t, []TestCase{{"boots", "passed"}, {"network is up", "failed"}, {"test 3", "skipped"},
		{"flaky thing", "passed"}, {"shuts down", "passed"}}, s.Cases)

	s, err = ParseTAP(strings.NewReader("1..3\nok 1 - a\n"))
	require.NoError(t, err)
	require.Equal(t, 2, s.Failed, "planned tests that never reported fail")

	_, err = ParseTAP(strings.NewReader("ok 1\nBail out! no power\n"))
	require.ErrorContains(t, err, "Bail out! no power")
	_, err = ParseTAP(strings.NewReader("nothing here\n"))
	require.ErrorContains(t, err, "no test lines")
}

func TestParseJUnit(t *testing.T) {
	s, err := ParseJUnit(strings.NewReader(`<?xml version="1.0"?>
<testsuites>
  <testsuite name="boot">
    <testcase classname="boot" name="kernel"/>
    <testcase classname="boot" name="init"><failure message="timeout">no init</failure></testcase>
  </testsuite>
  <testsuite name="io">
    <testcase name="usb"><skipped/></testcase>
    <testcase name="disk"><error message="crash"/></testcase>
  </testsuite>
</testsuites>`))
	require.NoError(t, err)
	require.Equal(t, TestSummary{Passed: 1, Failed: 2, Skipped: 1, Cases: []TestCase{
		{"boot.kernel", "passed"}, {"boot.init", "failed"}, {"usb", "skipped"}, {"disk", "failed"}}}, s)

	s, err = ParseJUnit(strings.NewReader(`<testsuite><testcase name="only"/></testsuite>`))
	require.NoError(t, err)
	require.Equal(t, 1, s.Passed)
	_, err = ParseJUnit(strings.NewReader(`<testsuite>`))
	require.Error(t, err)
	_, err = ParseJUnit(strings.NewReader(`<testsuite></testsuite>`))
	require.ErrorContains(t, err, "no test cases")
}
