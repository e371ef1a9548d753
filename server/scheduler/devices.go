package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// poolDevice is a device as one pass sees it.
type poolDevice struct {
	d      store.Device
	labels map[string]string
	// taken is set once this pass leased it (or found it taken).
	taken bool
}

func (p *poolDevice) usable() bool {
	return p.d.Declared && (p.d.Health == "good" || p.d.Health == "unknown")
}

func (p *poolDevice) free() bool {
	return p.usable() && !p.taken && p.d.State == "idle" && !p.d.LeaseWorkRequestID.Valid
}

// devicePool is the devices of one pass, by worker.
type devicePool struct {
	byWorker map[int64][]*poolDevice
}

func loadDevices(ctx context.Context, st *store.Store) (*devicePool, error) {
	all, err := st.Devices(ctx)
	if err != nil {
		return nil, err
	}
	p := &devicePool{byWorker: map[int64][]*poolDevice{}}
	for _, d := range all {
		pd := &poolDevice{d: d, labels: map[string]string{}}
		_ = json.Unmarshal([]byte(d.Labels), &pd.labels)
		p.byWorker[d.WorkerID] = append(p.byWorker[d.WorkerID], pd)
	}
	for _, ds := range p.byWorker {
		sort.Slice(ds, func(i, j int) bool { return ds[i].d.Name < ds[j].d.Name })
	}
	return p, nil
}

func (p *devicePool) matching(m tasks.DeviceMatch, workerID int64) []*poolDevice {
	var out []*poolDevice
	for _, d := range p.byWorker[workerID] {
		if d.d.Declared && m.Matches(d.d.Name, d.d.DeviceType, d.labels) {
			out = append(out, d)
		}
	}
	return out
}

// eligible keeps the workers with a usable matching device and counts the
// requests they can take now; when none is left, why says why in words
// for the user: no such device, or all of them out of service. (Busy
// devices keep their workers eligible: busyReason speaks of them.)
func (p *devicePool) eligible(m tasks.DeviceMatch, cands []*candidate) (elig []*candidate, free int, why string) {
	var matching, usable int
	health := map[string][]string{}
	for _, c := range cands {
		n := 0
		keep := false
		for _, d := range p.matching(m, c.w.ID) {
			matching++
			if !d.usable() {
				health[d.d.Health] = append(health[d.d.Health], d.d.Name)
				continue
			}
			usable++
			keep = true
			if d.free() {
				n++
			}
		}
		if keep {
			elig = append(elig, c)
			free += min(max(c.free, 0), n)
		}
	}
	switch {
	case matching == 0:
		why = "no device matching " + m.String()
	case usable == 0:
		var parts []string
		for h, names := range health {
			parts = append(parts, fmt.Sprintf("%s: %s", h, strings.Join(names, ", ")))
		}
		sort.Strings(parts)
		why = fmt.Sprintf("all %d devices matching %s are out of service (%s)", matching, m.String(), strings.Join(parts, "; "))
	}
	return elig, free, why
}

// pick chooses a worker with a free slot and a free matching device, as
// pick does, and the device: by name, so that choices are stable.
func (p *devicePool) pick(m tasks.DeviceMatch, cands []*candidate) (*candidate, *poolDevice) {
	var withDevice []*candidate
	for _, c := range cands {
		for _, d := range p.matching(m, c.w.ID) {
			if d.free() {
				withDevice = append(withDevice, c)
				break
			}
		}
	}
	c := pick(withDevice)
	if c == nil {
		return nil, nil
	}
	for _, d := range p.matching(m, c.w.ID) {
		if d.free() {
			return c, d
		}
	}
	return nil, nil
}

// busyReason says why a request waits although workers can run it: for a
// request that needs a device, whether its devices are busy or their
// workers offline.
func (p *devicePool) busyReason(m *tasks.DeviceMatch, elig []*candidate) string {
	if m == nil || p == nil {
		return busyReason(elig)
	}
	online := 0
	for _, c := range elig {
		if c.connected {
			online++
		}
	}
	if online == 0 {
		if len(elig) == 1 {
			return fmt.Sprintf("the only worker with a device matching %s (%s) is offline", m.String(), elig[0].w.Name)
		}
		return fmt.Sprintf("all %d workers with a device matching %s are offline", len(elig), m.String())
	}
	n := 0
	for _, c := range elig {
		for _, d := range p.matching(*m, c.w.ID) {
			if d.usable() {
				n++
			}
		}
	}
	return fmt.Sprintf("all %d devices matching %s are busy", n, m.String())
}
