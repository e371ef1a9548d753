package deb822

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dsc is what dpkg-source -b writes for a small native package.
const dsc = `Format: 3.0 (native)
Source: hello
Binary: hello, hello-doc
Architecture: any all
Version: 1.0
Maintainer: Kiln Test <kiln@example.org>
Standards-Version: 4.6.2
Build-Depends: debhelper-compat (= 13)
Package-List:
 hello deb misc optional arch=any
 hello-doc deb doc optional arch=all
Checksums-Sha1:
 a97d0414a234f77bbcd26328c7e9a43006ab3296 568 hello_1.0.tar.xz
Checksums-Sha256:
 efde42b56f4a551fa8284611103aa954df54ebabe263abfb8f286561dd9ba941 568 hello_1.0.tar.xz
Files:
 0a5981a84f99ebc35589431fba6f32fc 568 hello_1.0.tar.xz
`

func parse(t *testing.T, text string) *Document {
	t.Helper()
	d, err := Parse(strings.NewReader(text), "test.dsc")
	require.NoError(t, err)
	return d
}

func TestParseDsc(t *testing.T) {
	d := parse(t, dsc)
	require.False(t, d.Signed)
	p, err := d.Single()
	require.NoError(t, err)
	require.Equal(t, 1, p.Line)
	require.Len(t, p.Fields, 12)
	require.Equal(t, "hello", p.Value("source"), "lookups ignore case")
	require.Equal(t, "Source", p.Fields[1].Name, "names keep their case")
	require.Equal(t, "debhelper-compat (= 13)", p.Value("Build-Depends"))
	require.Equal(t, "\n 0a5981a84f99ebc35589431fba6f32fc 568 hello_1.0.tar.xz", p.Value("Files"),
		"python-debian's value: the empty first line, then the continuation lines as written")
	require.Equal(t, "\n hello deb misc optional arch=any\n hello-doc deb doc optional arch=all", p.Value("package-list"))
	f, ok := p.Field("FILES")
	require.True(t, ok)
	require.Equal(t, 16, f.Line)
	_, ok = p.Get("Description")
	require.False(t, ok)
	require.Equal(t, "", p.Value("Description"))
	require.Equal(t, "3.0 (native)", p.Map()["Format"])
}

func TestParseLayout(t *testing.T) {
	// Leading blank lines, comments, CRLF, trailing spaces, a value on the
	// first line continued, a lone " ." and no final newline.
	text := "\n  \n# a comment\r\nPackage:   hello  \r\nDescription: short\r\n long line \r\n .\r\n# inside\r\n  indented\r\nX-Empty:\r\n\r\n \t \nPackage: second\nVersion :1"
	d := parse(t, text)
	require.Len(t, d.Paragraphs, 2)
	p := d.Paragraphs[0]
	require.Equal(t, 4, p.Line)
	require.Equal(t, "hello", p.Value("Package"))
	require.Equal(t, "short\n long line \n .\n  indented", p.Value("Description"))
	require.Equal(t, []string{"short", "long line ", "", " indented"}, Lines(p.Value("Description")))
	require.Equal(t, "", p.Value("X-Empty"))
	_, ok := p.Get("x-empty")
	require.True(t, ok)
	q := d.Paragraphs[1]
	require.Equal(t, 13, q.Line)
	require.Equal(t, map[string]string{"Package": "second", "Version": "1"}, q.Map(), "whitespace before the colon, as python-debian allows")

	_, err := d.Single()
	require.ErrorContains(t, err, "test.dsc:13: a second paragraph")
	empty := parse(t, "\n# nothing\n\n")
	require.Empty(t, empty.Paragraphs)
	_, err = empty.Single()
	require.EqualError(t, err, "test.dsc: no fields")
}

// signed wraps text in a clear signature as gpg --clearsign does, dash-
// escaping lines that start with "-".
func signed(text string) string {
	var b strings.Builder
	b.WriteString("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n")
	for line := range strings.SplitSeq(strings.TrimSuffix(text, "\n"), "\n") {
		if strings.HasPrefix(line, "-") {
			b.WriteString("- ")
		}
		b.WriteString(line + "\n")
	}
	b.WriteString("-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEEexample\n=abcd\n-----END PGP SIGNATURE-----\n")
	return b.String()
}

func TestParseSigned(t *testing.T) {
	plain := parse(t, dsc)
	d := parse(t, signed(dsc))
	require.True(t, d.Signed)
	require.Len(t, d.Paragraphs, 1)
	for i, f := range plain.Paragraphs[0].Fields {
		g := d.Paragraphs[0].Fields[i]
		require.Equal(t, f.Name, g.Name)
		require.Equal(t, f.Value, g.Value)
		require.Equal(t, f.Line+3, g.Line, "lines count from the top of the file")
	}

	// Dash-escaped lines are unescaped; "- " may escape any line.
	d = parse(t, signed("Description: x\n -- not a field\n")+"\n\n")
	require.Equal(t, "x\n -- not a field", d.Paragraphs[0].Value("Description"))
	d = parse(t, "-----BEGIN PGP SIGNED MESSAGE-----  \nHash: SHA256\n\n- Source: hello\n-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----")
	require.Equal(t, "hello", d.Paragraphs[0].Value("Source"))
}

func TestParseErrors(t *testing.T) {
	sig := "-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----\n"
	tests := []struct {
		name, text string
		want       string
	}{
		{"not a field", "Source: hello\nVersion 1.0\n", `test.dsc:2: expected a field ("Name: value") or a continuation line (starting with a space), got "Version 1.0"`},
		{"empty name", "Source: hello\n: 1.0\n", "test.dsc:2: expected a field"},
		{"continuation first", "\n  1.0\nSource: hello\n", "test.dsc:2: a continuation line (starting with whitespace) with no field before it"},
		{"continuation after a blank line", "Source: hello\n\n 1.0\n", "test.dsc:3: a continuation line"},
		{"duplicate", "Source: hello\nVersion: 1\nsource: other\n", `test.dsc:3: field "source" given twice in a paragraph (first on line 1)`},
		{"invalid UTF-8", "Source: hello\nMaintainer: J\xf6rg\n", "test.dsc:2: not valid UTF-8"},
		{"no signature", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSource: hello\n", "test.dsc: the OpenPGP signed message has no signature"},
		{"no headers end", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n", "test.dsc: the OpenPGP signed message has no signature"},
		{"signature not ended", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSource: hello\n-----BEGIN PGP SIGNATURE-----\nxx\n", "test.dsc: the OpenPGP signature does not end"},
		{"text after", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSource: hello\n" + sig + "\nVersion: 2\n", "test.dsc:9: text after the OpenPGP signature"},
		{"missing blank line", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\nSource: hello\n\n" + sig, `test.dsc:3: unexpected OpenPGP armor header "Source: hello"`},
		{"not dash-escaped", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSource: hello\n-Version: 1\n" + sig, `test.dsc:5: a line of the signed text starts with "-" but is not dash-escaped`},
		{"armor inside", "Source: hello\n" + signed("Version: 1\n"), `test.dsc:2: unexpected OpenPGP armor line "-----BEGIN PGP SIGNED MESSAGE-----"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.text), "test.dsc")
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.want)
			var se *SyntaxError
			require.True(t, errors.As(err, &se), "%T", err)
		})
	}
	_, err := Parse(strings.NewReader("A: \xff\n"), "x")
	require.ErrorIs(t, err, ErrInvalidUTF8)
}

func TestParseFile(t *testing.T) {
	_, err := ParseFile(t.TempDir())
	require.ErrorContains(t, err, "not a regular file")
	_, err = ParseFile("/nonexistent/x.dsc")
	require.ErrorContains(t, err, "read control file")
}

func TestFileEntries(t *testing.T) {
	p, err := parse(t, dsc).Single()
	require.NoError(t, err)
	got, err := p.FileEntries()
	require.NoError(t, err)
	require.Equal(t, []FileEntry{{Name: "hello_1.0.tar.xz", Size: 568, MD5: "0a5981a84f99ebc35589431fba6f32fc",
		SHA256: "efde42b56f4a551fa8284611103aa954df54ebabe263abfb8f286561dd9ba941"}}, got)

	changes := parse(t, `Architecture: source
Files:
 0a5981a84f99ebc35589431fba6f32fc 568 misc optional hello_1.0.tar.xz
 1a5981a84f99ebc35589431fba6f32fc 12 misc optional hello_1.0.dsc
`).Paragraphs[0]
	got, err = changes.FileEntries()
	require.NoError(t, err)
	require.Equal(t, []FileEntry{
		{Name: "hello_1.0.tar.xz", Size: 568, MD5: "0a5981a84f99ebc35589431fba6f32fc", Section: "misc", Priority: "optional"},
		{Name: "hello_1.0.dsc", Size: 12, MD5: "1a5981a84f99ebc35589431fba6f32fc", Section: "misc", Priority: "optional"},
	}, got, "no Checksums-Sha256: MD5 only")

	md5 := "0a5981a84f99ebc35589431fba6f32fc"
	sha := "efde42b56f4a551fa8284611103aa954df54ebabe263abfb8f286561dd9ba941"
	tests := []struct {
		name, text, want string
	}{
		{"no Files", "Source: x\n", "test.dsc:1: no Files field"},
		{"words", "Source: x\nFiles:\n " + md5 + " 568\n", "test.dsc:2: field Files: entry 1: want \"md5 size name\" or \"md5 size section priority name\", got 2 words"},
		{"hex", "Files:\n zz 568 a\n", `field Files: entry 1: invalid checksum "zz": want 32 hex digits`},
		{"size", "Files:\n " + md5 + " -1 a\n", `entry 1: invalid size "-1"`},
		{"path", "Files:\n " + md5 + " 1 ../../etc/passwd\n", `invalid file name "../../etc/passwd"`},
		{"dot", "Files:\n " + md5 + " 1 ..\n", `invalid file name ".."`},
		{"twice", "Files:\n " + md5 + " 1 a\n " + md5 + " 1 a\n", "entry 2: a is listed twice"},
		{"sha words", "Files:\n " + md5 + " 1 a\nChecksums-Sha256:\n " + sha + " 1 x y\n", `test.dsc:3: field Checksums-Sha256: entry 1: want "sha256 size name", got 4 words`},
		{"sha short", "Files:\n " + md5 + " 1 a\nChecksums-Sha256:\n " + md5 + " 1 a\n", "want 64 hex digits"},
		{"sha missing", "Files:\n " + md5 + " 1 a\n " + md5 + " 1 b\nChecksums-Sha256:\n " + sha + " 1 a\n", "test.dsc:4: field Checksums-Sha256 does not list b, which Files lists"},
		{"sha extra", "Files:\n " + md5 + " 1 a\nChecksums-Sha256:\n " + sha + " 1 a\n " + sha + " 1 c\n", "field Checksums-Sha256 lists c, which Files does not"},
		{"sha size", "Files:\n " + md5 + " 1 a\nChecksums-Sha256:\n " + sha + " 2 a\n", "field Checksums-Sha256 gives a 2 bytes, Files 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.text).Paragraphs[0].FileEntries()
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestDict(t *testing.T) {
	p := parse(t, dsc).Paragraphs[0]
	d := p.Dict(Dsc)
	require.Equal(t, "hello", d["Source"])
	require.Equal(t, "\n hello deb misc optional arch=any\n hello-doc deb doc optional arch=all", d["Package-List"])
	require.Equal(t, []map[string]string{{"md5sum": "0a5981a84f99ebc35589431fba6f32fc", "size": "568", "name": "hello_1.0.tar.xz"}}, d["Files"])
	require.Equal(t, []map[string]string{{"sha256": "efde42b56f4a551fa8284611103aa954df54ebabe263abfb8f286561dd9ba941", "size": "568", "name": "hello_1.0.tar.xz"}}, d["Checksums-Sha256"])
	require.Equal(t, []map[string]string{{"sha1": "a97d0414a234f77bbcd26328c7e9a43006ab3296", "size": "568", "name": "hello_1.0.tar.xz"}}, d["Checksums-Sha1"])
	require.Len(t, d, len(p.Fields))

	plain := p.Dict(Plain)
	require.Equal(t, p.Value("Files"), plain["Files"], "Plain leaves every field a string")

	c := parse(t, "files: a 1 misc optional x.deb\nChecksums-Sha512:\n s 1 x.deb extra\n t 2\n").Paragraphs[0].Dict(Changes)
	require.Equal(t, map[string]string{"md5sum": "a", "size": "1", "section": "misc", "priority": "optional", "name": "x.deb"}, c["files"],
		"a one-line value is one map, under the name as written")
	require.Equal(t, []map[string]string{{"sha512": "s", "size": "1", "name": "x.deb"}, {"sha512": "t", "size": "2"}}, c["Checksums-Sha512"],
		"python-debian's zip: extra words dropped, missing ones absent")
}

func TestLines(t *testing.T) {
	require.Equal(t, []string{""}, Lines(""))
	require.Equal(t, []string{"", "a", "", "\tb", ".."}, Lines("\n a\n .\n \tb\n\t.."), "only a lone \".\" is an empty line")
}
