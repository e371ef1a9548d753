package deb822

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParse checks that Parse never panics, and that what it accepts
// survives a round trip: the fields written back out as plain text parse
// to the same names and values.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		dsc,
		signed(dsc),
		signed("Description: x\n -- dashes\n"),
		"Package: a\nDescription: b\n c\n .\n d\n\nPackage: e\n",
		"# comment\r\nA :  b \r\n\t c\r\n",
		"Files:\n 0a5981a84f99ebc35589431fba6f32fc 568 misc optional a.deb\n",
		"Files: x\n\n y\n",
		"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n",
		"A: \xff",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		d, err := Parse(strings.NewReader(text), "fuzz")
		if err != nil {
			return
		}
		var b strings.Builder
		for _, p := range d.Paragraphs {
			require.NotEmpty(t, p.Fields)
			for _, fl := range p.Fields {
				require.NotEmpty(t, fl.Name)
				require.NotContains(t, fl.Name, ":")
				b.WriteString(fl.Name + ": " + fl.Value + "\n")
			}
			b.WriteString("\n")
			_ = p.Dict(Changes)
			_, _ = p.FileEntries()
		}
		again, err := Parse(strings.NewReader(b.String()), "again")
		require.NoError(t, err, "%q", b.String())
		require.Len(t, again.Paragraphs, len(d.Paragraphs))
		for i, p := range d.Paragraphs {
			q := again.Paragraphs[i]
			require.Len(t, q.Fields, len(p.Fields))
			for j := range p.Fields {
				require.Equal(t, p.Fields[j].Name, q.Fields[j].Name)
				require.Equal(t, p.Fields[j].Value, q.Fields[j].Value)
			}
		}
	})
}
