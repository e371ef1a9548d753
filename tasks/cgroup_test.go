package tasks

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-ci/kiln/tasks/runner"
)

// testCgroupParent gives this package's runs a cgroup parent of their own,
// so that they never show in the runner's default parent while the runner's
// tests inspect it (go test runs packages in parallel).
func testCgroupParent(t *testing.T) string {
	def, err := runner.DefaultCgroupParent()
	if err != nil {
		return ""
	}
	dir := filepath.Join(filepath.Dir(def), fmt.Sprintf("kiln-test-tasks-%d", os.Getpid()))
	t.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}
