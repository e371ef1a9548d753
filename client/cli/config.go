package cli

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// serverSectionPrefix starts the name of every server section.
const serverSectionPrefix = "server:"

// generalSection holds default-server.
const generalSection = "General"

// ServerConfig is one [server:NAME] section of the client configuration.
type ServerConfig struct {
	// APIURL is the api-url key: the API's URL including /api, for example
	// http://127.0.0.1:8080/api.
	APIURL string
	// Scope is the scope key, sent in X-Debusine-Scope.
	Scope string
	// Token is the token key, sent in the Token header.
	Token string
}

// serverKeys are the keys a server section must have, and the only ones it
// may have, as in debusine's client.
var serverKeys = []string{"api-url", "scope", "token"}

// DefaultConfigPath returns the default client configuration file,
// <user config dir>/kiln/client/config.ini (~/.config/kiln/client/config.ini
// on Linux).
func DefaultConfigPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("default client configuration path: %w", err)
	}
	return filepath.Join(dir, "kiln", "client", "config.ini"), nil
}

// LoadConfig reads the client configuration at path and returns the section
// of server, which is a name (section [server:NAME]) or FQDN/SCOPE (the
// first server section whose api-url has that host name and whose scope is
// SCOPE). An empty server means [General] default-server, which may be
// either form. The section must have exactly api-url, scope and token, as
// debusine's client requires.
func LoadConfig(path, server string) (ServerConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return ServerConfig{}, fmt.Errorf("read client configuration: %w", err)
	}
	ini, err := parseINI(b)
	if err != nil {
		return ServerConfig{}, fmt.Errorf("client configuration %s: %w", path, err)
	}
	sc, err := ini.server(server)
	if err != nil {
		return ServerConfig{}, fmt.Errorf("client configuration %s: %w", path, err)
	}
	return sc, nil
}

// server resolves a --server value (see LoadConfig).
func (f *iniFile) server(name string) (ServerConfig, error) {
	if name == "" {
		general := f.section(generalSection)
		if general == nil {
			return ServerConfig{}, errors.New("no server given and no [General] section with default-server; use --server or add them")
		}
		def, ok := general.keys["default-server"]
		if !ok || def == "" {
			return ServerConfig{}, errors.New("no server given and no default-server in [General]; use --server or add it")
		}
		name = def
	}

	var sec *iniSection
	if fqdn, scope, ok := strings.Cut(name, "/"); ok {
		for _, s := range f.sections {
			if !strings.HasPrefix(s.name, serverSectionPrefix) {
				continue
			}
			u, err := url.Parse(s.keys["api-url"])
			if err == nil && strings.EqualFold(u.Hostname(), fqdn) && s.keys["scope"] == scope {
				sec = s
				break
			}
		}
	} else {
		sec = f.section(serverSectionPrefix + name)
	}
	if sec == nil {
		return ServerConfig{}, fmt.Errorf("no configuration for server %q (a [server:NAME] section, or FQDN/SCOPE)", name)
	}

	var missing, extra []string
	for _, k := range serverKeys {
		if _, ok := sec.keys[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range sec.keys {
		if !slices.Contains(serverKeys, k) {
			extra = append(extra, k)
		}
	}
	if len(missing) > 0 {
		return ServerConfig{}, fmt.Errorf("[%s] lacks required keys: %s", sec.name, strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		return ServerConfig{}, fmt.Errorf("[%s] has unknown keys: %s", sec.name, strings.Join(extra, ", "))
	}
	sc := ServerConfig{APIURL: sec.keys["api-url"], Scope: sec.keys["scope"], Token: sec.keys["token"]}
	if u, err := url.Parse(sc.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ServerConfig{}, fmt.Errorf("[%s] api-url %q is not an http(s) URL", sec.name, sc.APIURL)
	}
	return sc, nil
}

// WriteConfig writes a fresh client configuration to path with one server
// section, [server:name], which is also the default server. It creates the
// missing directories (mode 0700) and replaces any file at path with one of
// mode 0600, since it holds a token.
func WriteConfig(path, name string, sc ServerConfig) error {
	if name == "" || strings.ContainsAny(name, "[]/\r\n") || strings.TrimSpace(name) != name {
		return fmt.Errorf("write client configuration %s: invalid server name %q", path, name)
	}
	for key, v := range map[string]string{"api-url": sc.APIURL, "scope": sc.Scope, "token": sc.Token} {
		if strings.ContainsAny(v, "\r\n") || strings.TrimSpace(v) != v {
			return fmt.Errorf("write client configuration %s: invalid %s %q", path, key, v)
		}
	}

	var b bytes.Buffer
	b.WriteString("# Kiln client configuration (the debusine client's format).\n")
	fmt.Fprintf(&b, "[%s]\ndefault-server = %s\n\n", generalSection, name)
	fmt.Fprintf(&b, "[%s%s]\napi-url = %s\nscope = %s\ntoken = %s\n", serverSectionPrefix, name, sc.APIURL, sc.Scope, sc.Token)

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write client configuration: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.ini")
	if err != nil {
		return fmt.Errorf("write client configuration: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write client configuration: %w", err)
	}
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write client configuration: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write client configuration: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write client configuration: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write client configuration: %w", err)
	}
	return nil
}

// iniFile is a parsed INI file, as far as Python's configparser (which the
// debusine client uses) and our configuration need: sections in file order,
// case-sensitive section names, lower-cased keys. Multi-line values and %
// interpolation are not supported.
type iniFile struct {
	sections []*iniSection
}

// iniSection is one [name] section.
type iniSection struct {
	name string
	keys map[string]string
}

func (f *iniFile) section(name string) *iniSection {
	for _, s := range f.sections {
		if s.name == name {
			return s
		}
	}
	return nil
}

// parseINI parses data: [section] headers; key = value or key: value lines
// (split at the first = or :, both sides trimmed, keys lower-cased); blank
// lines and lines starting with # or ; ignored. A key outside a section, a
// line that is none of these, and a repeated section or key are errors.
func parseINI(data []byte) (*iniFile, error) {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	f := &iniFile{}
	var cur *iniSection
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		switch {
		case line == "", line[0] == '#', line[0] == ';':
			continue
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: section header %q lacks its closing ]", n, line)
			}
			name := strings.TrimSpace(line[1 : len(line)-1])
			if name == "" {
				return nil, fmt.Errorf("line %d: empty section name", n)
			}
			if f.section(name) != nil {
				return nil, fmt.Errorf("line %d: section [%s] appears twice", n, name)
			}
			cur = &iniSection{name: name, keys: map[string]string{}}
			f.sections = append(f.sections, cur)
			continue
		}
		sep := strings.IndexAny(line, "=:")
		if sep < 0 {
			return nil, fmt.Errorf("line %d: expected [section], key = value or a comment, got %q", n, line)
		}
		key := strings.ToLower(strings.TrimSpace(line[:sep]))
		if key == "" {
			return nil, fmt.Errorf("line %d: empty key", n)
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: key %q comes before any [section]", n, key)
		}
		if _, dup := cur.keys[key]; dup {
			return nil, fmt.Errorf("line %d: key %q appears twice in [%s]", n, key, cur.name)
		}
		cur.keys[key] = strings.TrimSpace(line[sep+1:])
	}
	return f, nil
}
