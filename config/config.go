// Package config fills a command's flags from, in order of precedence, the
// command line, KILN_* environment variables and a YAML config file whose
// keys are the flag names. One source of truth for every option: the flag's
// definition carries its name, default and help text.
package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// EnvName returns the environment variable that sets flag name, for example
// KILN_DATABASE_URL for --database-url.
func EnvName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Apply sets every flag in fs that was not given on the command line from the
// environment variable prefix+NAME, or else from the YAML file at path (when
// path is not empty). A missing file is an error only when required is true.
// Unknown keys in the file are an error, so that a typo does not silently
// leave a default in place.
func Apply(fs *pflag.FlagSet, prefix, path string, required bool) error {
	fileValues := map[string]any{}
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			if err := yaml.Unmarshal(b, &fileValues); err != nil {
				return fmt.Errorf("config file %s: %w", path, err)
			}
		case os.IsNotExist(err) && !required:
		default:
			return fmt.Errorf("config file: %w", err)
		}
	}
	for key := range fileValues {
		if fs.Lookup(key) == nil {
			return fmt.Errorf("config file %s: unknown key %q", path, key)
		}
	}
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if firstErr != nil || f.Changed {
			return
		}
		env := EnvName(prefix, f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				firstErr = fmt.Errorf("%s=%q: %w", env, v, err)
			}
			return
		}
		if v, ok := fileValues[f.Name]; ok {
			s := scalar(v)
			if err := fs.Set(f.Name, s); err != nil {
				firstErr = fmt.Errorf("config file %s: %s: %w", path, f.Name, err)
			}
		}
	})
	return firstErr
}

func scalar(v any) string {
	switch x := v.(type) {
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ",")
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}
