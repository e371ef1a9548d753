package deb822

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxFileSize is the largest file ParseFile reads: control files are a few
// kilobytes, and a bound keeps a wrong argument (an ISO image) from filling
// memory.
const MaxFileSize = 64 << 20

// ErrInvalidUTF8 is wrapped by the SyntaxError of a line that is not valid
// UTF-8; Debian policy requires control files to be UTF-8, and a caller may
// retry after converting from a legacy encoding.
var ErrInvalidUTF8 = errors.New("not valid UTF-8")

// SyntaxError is malformed input: the file (as named by the caller), the
// line (1-based, 0 when the problem is the file as a whole) and what is
// wrong.
type SyntaxError struct {
	File string
	Line int
	Err  error
}

func (e *SyntaxError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *SyntaxError) Unwrap() error { return e.Err }

// Field is one field of a paragraph.
type Field struct {
	// Name is the field name as written; lookups ignore its case.
	Name string
	// Value is python-debian's string value: the text after the colon
	// without surrounding whitespace, then each continuation line as
	// written (its leading whitespace kept, a lone " ." kept as is), each
	// after a "\n". A field whose first line is empty thus starts with
	// "\n", as "Files:\n 0123… 123 foo.dsc".
	Value string
	// Line is the line the field starts on.
	Line int
}

// Paragraph is one paragraph of a control file: its fields in file order.
type Paragraph struct {
	// File names the file in error messages.
	File string
	// Line is the line of the paragraph's first field.
	Line   int
	Fields []Field
}

// Field returns the field called name, ignoring case.
func (p Paragraph) Field(name string) (Field, bool) {
	for _, f := range p.Fields {
		if strings.EqualFold(f.Name, name) {
			return f, true
		}
	}
	return Field{}, false
}

// Get returns the value of field name (ignoring case) and whether the
// paragraph has it.
func (p Paragraph) Get(name string) (string, bool) {
	f, ok := p.Field(name)
	return f.Value, ok
}

// Value returns the value of field name (ignoring case), "" when absent.
func (p Paragraph) Value(name string) string {
	v, _ := p.Get(name)
	return v
}

// Map returns the fields as a map from their names as written to their
// values.
func (p Paragraph) Map() map[string]string {
	m := make(map[string]string, len(p.Fields))
	for _, f := range p.Fields {
		m[f.Name] = f.Value
	}
	return m
}

// Document is a parsed control file.
type Document struct {
	// File names the file in error messages.
	File       string
	Paragraphs []Paragraph
	// Signed reports that the text was wrapped in an OpenPGP clear
	// signature, which was removed and not verified.
	Signed bool
}

// Single returns the document's only paragraph, or an error when it has
// none or several (a .dsc or .changes has exactly one).
func (d *Document) Single() (Paragraph, error) {
	switch len(d.Paragraphs) {
	case 0:
		return Paragraph{}, &SyntaxError{File: d.File, Err: errors.New("no fields")}
	case 1:
		return d.Paragraphs[0], nil
	}
	return Paragraph{}, &SyntaxError{File: d.File, Line: d.Paragraphs[1].Line,
		Err: errors.New("a second paragraph: want exactly one")}
}

// ParseFile parses the control file at path (at most MaxFileSize bytes).
func ParseFile(path string) (*Document, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read control file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read control file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read control file: %s is not a regular file", path)
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("read control file: %s has %d bytes, more than the %d a control file may have", path, fi.Size(), MaxFileSize)
	}
	return Parse(io.LimitReader(f, MaxFileSize), path)
}

// OpenPGP armor lines of a clear-signed message (RFC 4880 §7).
const (
	armorSignedMessage = "-----BEGIN PGP SIGNED MESSAGE-----"
	armorSignature     = "-----BEGIN PGP SIGNATURE-----"
	armorSignatureEnd  = "-----END PGP SIGNATURE-----"
)

// parser states.
const (
	stStart     = iota // before the first line that is not blank
	stHeaders          // armor headers of a signed message
	stText             // the control text
	stSignature        // the signature block
	stAfter            // after the signature
)

// Parse reads a control file from r; file names it in error messages.
//
// It follows python-debian: lines starting with "#" are dropped, blank lines
// (empty or only whitespace) separate paragraphs, a line starting with
// whitespace continues the previous field. Unlike python-debian, which skips
// what it does not understand, it reports as a *SyntaxError any other line
// that is not "Name: value", a continuation line with no field before it, a
// field given twice in a paragraph, invalid UTF-8, and a clear-signature
// wrapper that is incomplete or has text outside it. Dash-escaped lines
// ("- ") of a signed text are unescaped.
func Parse(r io.Reader, file string) (*Document, error) {
	p := &parser{doc: &Document{File: file}}
	br := bufio.NewReader(r)
	state := stStart
	for lineNo := 1; ; lineNo++ {
		raw, err := br.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
		if raw == "" && err != nil {
			break
		}
		line := strings.TrimRight(raw, "\r\n")
		if !utf8.ValidString(line) {
			return nil, p.errorf(lineNo, "%w", ErrInvalidUTF8)
		}
		if strings.HasPrefix(line, "#") {
			continue // a comment, as python-debian drops them anywhere
		}
		blank := strings.TrimSpace(line) == ""
		armor := strings.TrimRight(line, " \t")
		switch state {
		case stStart:
			if blank {
				continue
			}
			if armor == armorSignedMessage {
				p.doc.Signed = true
				state = stHeaders
				continue
			}
			state = stText
			if err := p.line(line, lineNo); err != nil {
				return nil, err
			}
		case stHeaders:
			if blank {
				state = stText
				continue
			}
			name, _, ok := strings.Cut(line, ":")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "Hash") {
				return nil, p.errorf(lineNo, "unexpected OpenPGP armor header %q: a clear-signed message has only Hash: headers, then an empty line", line)
			}
		case stText:
			if p.doc.Signed {
				switch {
				case armor == armorSignature:
					state = stSignature
					continue
				case strings.HasPrefix(line, "- "):
					line = line[2:]
				case strings.HasPrefix(line, "-"):
					return nil, p.errorf(lineNo, "a line of the signed text starts with \"-\" but is not dash-escaped (\"- \")")
				}
			} else if isArmor(armor) {
				return nil, p.errorf(lineNo, "unexpected OpenPGP armor line %q: a clear-signed message must start the file", armor)
			}
			if err := p.line(line, lineNo); err != nil {
				return nil, err
			}
		case stSignature:
			if armor == armorSignatureEnd {
				state = stAfter
			}
		case stAfter:
			if !blank {
				return nil, p.errorf(lineNo, "text after the OpenPGP signature")
			}
		}
		if err != nil { // io.EOF after a last line without "\n"
			break
		}
	}
	switch state {
	case stHeaders, stText:
		if p.doc.Signed {
			return nil, p.errorf(0, "the OpenPGP signed message has no signature (no %s line)", armorSignature)
		}
	case stSignature:
		return nil, p.errorf(0, "the OpenPGP signature does not end (no %s line)", armorSignatureEnd)
	}
	p.endParagraph()
	return p.doc, nil
}

// isArmor reports whether line looks like an OpenPGP armor line.
func isArmor(line string) bool {
	return (strings.HasPrefix(line, "-----BEGIN PGP ") || strings.HasPrefix(line, "-----END PGP ")) &&
		strings.HasSuffix(line, "-----")
}

type parser struct {
	doc *Document
	// cur is the paragraph being read; nil between paragraphs.
	cur *Paragraph
}

func (p *parser) errorf(line int, format string, args ...any) error {
	return &SyntaxError{File: p.doc.File, Line: line, Err: fmt.Errorf(format, args...)}
}

func (p *parser) endParagraph() {
	if p.cur != nil {
		p.doc.Paragraphs = append(p.doc.Paragraphs, *p.cur)
		p.cur = nil
	}
}

// line adds one line of control text.
func (p *parser) line(line string, lineNo int) error {
	if strings.TrimSpace(line) == "" {
		p.endParagraph()
		return nil
	}
	first, _ := utf8.DecodeRuneInString(line)
	if unicode.IsSpace(first) {
		if p.cur == nil {
			return p.errorf(lineNo, "a continuation line (starting with whitespace) with no field before it")
		}
		f := &p.cur.Fields[len(p.cur.Fields)-1]
		f.Value += "\n" + line
		return nil
	}
	// python-debian's field: a name of characters other than ":" and ASCII
	// whitespace, optional whitespace, ":", the value.
	end := strings.IndexAny(line, ": \t\n\r\f\v")
	if end < 0 {
		end = len(line)
	}
	name := line[:end]
	rest := strings.TrimLeftFunc(line[end:], unicode.IsSpace)
	if name == "" || !strings.HasPrefix(rest, ":") {
		return p.errorf(lineNo, "expected a field (\"Name: value\") or a continuation line (starting with a space), got %q", line)
	}
	if p.cur == nil {
		p.cur = &Paragraph{File: p.doc.File, Line: lineNo}
	}
	if prev, ok := p.cur.Field(name); ok {
		return p.errorf(lineNo, "field %q given twice in a paragraph (first on line %d)", name, prev.Line)
	}
	p.cur.Fields = append(p.cur.Fields, Field{Name: name, Value: strings.TrimSpace(rest[1:]), Line: lineNo})
	return nil
}

// Lines splits a field value into its logical lines as Debian policy reads
// them: the first line, then each continuation line without its first
// whitespace character, a lone "." standing for an empty line.
func Lines(value string) []string {
	lines := strings.Split(value, "\n")
	for i := 1; i < len(lines); i++ {
		_, n := utf8.DecodeRuneInString(lines[i])
		lines[i] = lines[i][n:]
		if lines[i] == "." {
			lines[i] = ""
		}
	}
	return lines
}
