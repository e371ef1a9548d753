package tasks

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// TestCase is one test's outcome: passed, failed or skipped.
type TestCase struct {
	Name   string `json:"name"`
	Result string `json:"result"`
}

// TestSummary is what a results file says.
type TestSummary struct {
	Passed, Failed, Skipped int
	Cases                   []TestCase
}

// Total is the number of test cases.
func (s TestSummary) Total() int { return s.Passed + s.Failed + s.Skipped }

func (s *TestSummary) add(name, result string) {
	switch result {
	case "passed":
		s.Passed++
	case "failed":
		s.Failed++
	case "skipped":
		s.Skipped++
	}
	s.Cases = append(s.Cases, TestCase{Name: name, Result: result})
}

var tapPlan = regexp.MustCompile(`^1\.\.(\d+)`)

var tapLine = regexp.MustCompile(`^\s*(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(\w+)\b.*)?$`)

// ParseTAP reads the Test Anything Protocol: "ok N - name", "not ok N -
// name", with SKIP and TODO directives (a failing TODO test is not a
// failure). Other lines are ignored; "Bail out!" is an error.
func ParseTAP(r io.Reader) (TestSummary, error) {
	var s TestSummary
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	plan := -1
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "Bail out!") {
			return s, fmt.Errorf("TAP: %s", strings.TrimSpace(line))
		}
		if m := tapPlan.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			fmt.Sscan(m[1], &plan)
			continue
		}
		m := tapLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[3]
		if name == "" {
			name = "test " + m[2]
		}
		directive := strings.ToUpper(m[4])
		switch {
		case directive == "SKIP":
			s.add(name, "skipped")
		case m[1] == "ok" || directive == "TODO":
			s.add(name, "passed")
		default:
			s.add(name, "failed")
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("TAP: %w", err)
	}
	if s.Total() == 0 {
		return s, errors.New("TAP: no test lines")
	}
	if plan >= 0 && plan != s.Total() {
		// A plan that does not match means tests did not run: they fail.
		for i := s.Total(); i < plan; i++ {
			s.add(fmt.Sprintf("test %d (planned, never reported)", i+1), "failed")
		}
	}
	return s, nil
}

type junitCase struct {
	Name      string    `xml:"name,attr"`
	Classname string    `xml:"classname,attr"`
	Failure   *struct{} `xml:"failure"`
	Error     *struct{} `xml:"error"`
	Skipped   *struct{} `xml:"skipped"`
}

type junitSuite struct {
	Cases  []junitCase  `xml:"testcase"`
	Suites []junitSuite `xml:"testsuite"`
}

// ParseJUnit reads JUnit XML: a <testsuites> or a <testsuite> root, test
// cases with <failure>, <error> or <skipped> children.
func ParseJUnit(r io.Reader) (TestSummary, error) {
	var root junitSuite
	if err := xml.NewDecoder(io.LimitReader(r, 64<<20)).Decode(&root); err != nil {
		return TestSummary{}, fmt.Errorf("JUnit XML: %w", err)
	}
	var s TestSummary
	var walk func(junitSuite)
	walk = func(su junitSuite) {
		for _, c := range su.Cases {
			name := c.Name
			if c.Classname != "" {
				name = c.Classname + "." + c.Name
			}
			switch {
			case c.Failure != nil || c.Error != nil:
				s.add(name, "failed")
			case c.Skipped != nil:
				s.add(name, "skipped")
			default:
				s.add(name, "passed")
			}
		}
		for _, sub := range su.Suites {
			walk(sub)
		}
	}
	walk(root)
	if s.Total() == 0 {
		return s, errors.New("JUnit XML: no test cases")
	}
	return s, nil
}
