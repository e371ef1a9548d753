package cli

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParseINI checks the client configuration parser on any file
// content: it never panics; what it accepts has named, distinct sections
// and trimmed, lower-case keys without '=' or ':'; every server section it
// resolves has an http(s) api-url; and such a section can be written back
// with WriteConfig and read again, by name, as the default server and by
// FQDN/SCOPE, to the same values. WriteConfig may refuse only what it
// documents it cannot write: a name with '[', ']', '/' or surrounding
// spaces, a value with a carriage return.
func FuzzParseINI(f *testing.F) {
	for _, seed := range []string{
		twoServers,
		"[a]\nk: v = w\n",
		"\ufeff;c\n[ x ]\r\n=v\n",
		"[General]\ndefault-server = h.example/s\n[server:x]\napi-url = http://h.example:1234/api\nscope = s\ntoken = t\n",
		"[server:x]\napi-url = http://h/api\nscope = s\ntoken =\n",
		"[server: x ]\napi-url = http://h/api\nscope = s\ntoken = t\n",
		"[server:a=b:c]\napi-url = https://[::1]:8443/api\nscope = a/b\ntoken = t=u:v\n",
		"[server:a]b]\napi-url = http://h/api\nscope = s\ntoken = t\n",
		"[server:x]\napi-url = http://h/api\nscope = s\ntoken = a\rb\n",
		"[server:x]\napi-url = http://:80/api\nscope = s\ntoken = t\n",
		"[server:x]\napi-url = http://u:p@h/api?q#f\nscope = #s\ntoken = ;t\n",
		"[server:]\napi-url = http://h/api\nscope = s\ntoken = t\n",
		"[server:x]\napi-url = localhost/api\nscope = s\ntoken = t\n",
		"[server:x]\nAPI-URL = http://h/api\nScope = s\nTOKEN = t\n",
		"[server:x]\ntoken = a\nTOKEN = b\n",
		"[a]\n[a]\n",
		"[General]\ndefault-server = x\r\n[server:x]\r\napi-url=http://h/api\r\nscope=s\r\ntoken=t\r\n",
		"[\n", "[]\n", "=\n", "k\n", "\x00", "",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		ini, err := parseINI(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, s := range ini.sections {
			require.NotEmpty(t, s.name)
			require.False(t, seen[s.name], "section [%s] twice", s.name)
			seen[s.name] = true
			for k, v := range s.keys {
				require.NotEmpty(t, k)
				require.Equal(t, strings.ToLower(strings.TrimSpace(k)), k)
				require.NotContains(t, k, "=")
				require.NotContains(t, k, ":")
				require.Equal(t, strings.TrimSpace(v), v)
				require.NotContains(t, v, "\n")
			}
		}
		if sc, err := ini.server(""); err == nil {
			requireHTTPURL(t, sc.APIURL)
		}

		for _, s := range ini.sections {
			name, ok := strings.CutPrefix(s.name, serverSectionPrefix)
			if !ok || strings.Contains(name, "/") {
				continue
			}
			sc, err := ini.server(name)
			if err != nil {
				continue
			}
			requireHTTPURL(t, sc.APIURL)

			path := filepath.Join(dir, "config.ini")
			err = WriteConfig(path, name, sc)
			if err != nil {
				mayRefuse := name == "" || strings.ContainsAny(name, "[]") || strings.TrimSpace(name) != name
				for _, v := range []string{sc.APIURL, sc.Scope, sc.Token} {
					mayRefuse = mayRefuse || strings.Contains(v, "\r")
				}
				require.True(t, mayRefuse, "WriteConfig(%q, %+v) refused: %v", name, sc, err)
				continue
			}
			u, err := url.Parse(sc.APIURL)
			require.NoError(t, err)
			for _, server := range []string{name, "", u.Hostname() + "/" + sc.Scope} {
				got, err := LoadConfig(path, server)
				require.NoError(t, err, "server %q: WriteConfig(%q, %+v) wrote what LoadConfig cannot read", server, name, sc)
				require.Equal(t, sc, got, "server %q", server)
			}
		}
	})
}

func requireHTTPURL(t *testing.T, s string) {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	require.Contains(t, []string{"http", "https"}, u.Scheme)
	require.NotEmpty(t, u.Host)
}
