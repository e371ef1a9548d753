package schemas

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed tasks/*.json
var taskSchemas embed.FS

// TaskSchema returns the JSON Schema of the named task's task_data, read from
// the embedded file tasks/NAME.json.
func TaskSchema(name string) ([]byte, error) {
	b, err := fs.ReadFile(taskSchemas, "tasks/"+name+".json")
	if err != nil {
		return nil, fmt.Errorf("schema of task %q: %w", name, err)
	}
	return b, nil
}
