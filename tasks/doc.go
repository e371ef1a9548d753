// Package tasks owns the task contract: the Task interface, the Registry that
// maps task names to implementations and validates task_data against each
// task's JSON Schema, the base CanRunOn rules shared by every task, the
// worker-side system analysis, and the concrete tasks (noop first).
//
// CanRunOn sees only the Requirements a task extracts from its task data, so
// the scheduler can group pending requests by requirements and evaluate each
// group once per worker. Tasks must not reach the database or the network
// from Requirements or CanRunOn.
package tasks
