package debpkg

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/deb822"
)

// ErrNoDpkgDeb is returned (wrapped) when dpkg-deb, which reads .deb files,
// is not in PATH.
var ErrNoDpkgDeb = errors.New("dpkg-deb is not in PATH; it is needed to read .deb files (install the dpkg package)")

// Limits on what is read from a .deb's control archive: real ones hold a
// few small files.
const (
	maxControlTar  = 64 << 20
	maxControlFile = 4 << 20
)

// debSource matches a DEBIAN/control Source field that carries the source
// version, as a binNMU's does: "hello (1.0-1)". Greedy, as debusine's.
var debSource = regexp.MustCompile(`^(.*) \((.*)\)$`)

// BinaryPackage describes a .deb or .udeb as a debian:binary-package
// artifact with data srcpkg_name and srcpkg_version (from the Source field,
// "name" or "name (version)", else Package and Version), deb_fields (the
// DEBIAN/control fields) and deb_control_files (the sorted names of the
// control archive's members). It runs dpkg-deb to read the control archive
// (see BinaryPackageContext to bound that run).
func BinaryPackage(debPath string) (Artifact, error) {
	return BinaryPackageContext(context.Background(), debPath)
}

// BinaryPackageContext is BinaryPackage with a context that ends the
// dpkg-deb run when done.
func BinaryPackageContext(ctx context.Context, debPath string) (Artifact, error) {
	name, err := localFile(debPath, ".deb", ".udeb")
	if err != nil {
		return Artifact{}, err
	}
	control, members, err := readControl(ctx, debPath)
	if err != nil {
		return Artifact{}, err
	}
	label := name + ": DEBIAN/control"
	doc, err := deb822.Parse(bytes.NewReader(control), label)
	if errors.Is(err, deb822.ErrInvalidUTF8) {
		// python-debian guesses the encoding of a .deb's control file; the
		// old packages that are not UTF-8 are Latin-1.
		doc, err = deb822.Parse(strings.NewReader(latin1(control)), label)
	}
	if err != nil {
		return Artifact{}, err
	}
	p, err := doc.Single()
	if err != nil {
		return Artifact{}, err
	}
	pkg, err := required(p, "Package")
	if err != nil {
		return Artifact{}, err
	}
	version, err := required(p, "Version")
	if err != nil {
		return Artifact{}, err
	}
	srcName, srcVersion := pkg, version
	if s, ok := p.Get("Source"); ok {
		srcName = s
		if m := debSource.FindStringSubmatch(s); m != nil {
			srcName, srcVersion = m[1], m[2]
		}
	}
	data := map[string]any{"srcpkg_name": srcName, "srcpkg_version": srcVersion, "deb_fields": p.Dict(deb822.Plain),
		"deb_control_files": members}
	return newArtifact(CategoryBinaryPackage, data, map[string]string{name: debPath}), nil
}

// readControl returns the DEBIAN/control file of a .deb and the sorted
// names of its control archive's members other than directories, without
// their leading "./".
func readControl(ctx context.Context, debPath string) ([]byte, []string, error) {
	bin, err := exec.LookPath("dpkg-deb")
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", debPath, ErrNoDpkgDeb)
	}
	// An absolute path cannot be taken for an option.
	abs, err := filepath.Abs(debPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", debPath, err)
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxControlTar, 64<<10
	cmd := exec.CommandContext(ctx, bin, "--ctrl-tarfile", abs)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("read %s: %w", debPath, ctx.Err())
		}
		if stdout.full {
			return nil, nil, fmt.Errorf("read %s: its control archive is larger than %d bytes", debPath, maxControlTar)
		}
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, nil, fmt.Errorf("read %s: dpkg-deb --ctrl-tarfile: %w: %s", debPath, err, msg)
		}
		return nil, nil, fmt.Errorf("read %s: dpkg-deb --ctrl-tarfile: %w", debPath, err)
	}
	var (
		control []byte
		members []string
	)
	tr := tar.NewReader(bytes.NewReader(stdout.Bytes()))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read the control archive of %s: %w", debPath, err)
		}
		if hdr.Typeflag == tar.TypeDir {
			continue
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		members = append(members, name)
		if name == "control" && hdr.Typeflag == tar.TypeReg {
			if hdr.Size > maxControlFile {
				return nil, nil, fmt.Errorf("read %s: its control file has %d bytes, more than %d", debPath, hdr.Size, maxControlFile)
			}
			if control, err = io.ReadAll(tr); err != nil {
				return nil, nil, fmt.Errorf("read the control file of %s: %w", debPath, err)
			}
		}
	}
	if control == nil {
		return nil, nil, fmt.Errorf("read %s: its control archive has no control file", debPath)
	}
	sort.Strings(members)
	return control, members, nil
}

// latin1 decodes Latin-1 text.
func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// limitedBuffer keeps up to max bytes and then fails writes, so that a
// child process writing too much is stopped by a broken pipe rather than
// filling memory.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	full bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		b.full = true
		return 0, fmt.Errorf("more than %d bytes", b.max)
	}
	return b.Buffer.Write(p)
}
