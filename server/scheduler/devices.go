package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/schemas"
	"github.com/kiln-ci/kiln/server/store"
	"github.com/kiln-ci/kiln/tasks"
)

// poolDevice is a device as one pass sees it.
type poolDevice struct {
	d      store.Device
	labels map[string]string
	// taken is set once this pass leased or held it (or found it taken).
	taken bool
}

// usable says whether the device could serve a request at all: a job
// needs it in service (an unknown device is checked first), a special
// task only needs it not retired.
func (p *poolDevice) usable(special bool) bool {
	if !p.d.Declared {
		return false
	}
	if special {
		return p.d.Health != string(schemas.HealthRetired)
	}
	return p.d.Health == string(schemas.HealthGood) || p.d.Health == string(schemas.HealthUnknown)
}

// idle says that nothing holds or leases the device now.
func (p *poolDevice) idle() bool {
	return !p.taken && p.d.State == string(schemas.DeviceIdle) && !p.d.LeaseWorkRequestID.Valid
}

// ready says that a job may take the device now, as far as the device
// goes: good, idle, with no special task due.
func (p *poolDevice) ready() bool {
	return p.usable(false) && p.idle() && p.d.Health == string(schemas.HealthGood) &&
		p.d.Needs == "" && !p.d.UpkeepWorkRequestID.Valid
}

// freeFor says whether request id may take the device now.
func (p *poolDevice) freeFor(id int64, special bool) bool {
	if special {
		return p.usable(true) && p.idle() && p.d.UpkeepWorkRequestID.Valid && p.d.UpkeepWorkRequestID.Int64 == id
	}
	return p.ready() && (!p.d.HeldFor.Valid || p.d.HeldFor.Int64 == id)
}

// devicePool is the devices of one pass, by worker.
type devicePool struct {
	all      []*poolDevice
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
		p.all = append(p.all, pd)
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

// heldReady returns the jobs that devices are held for and that may take
// them now: the pass looks at them whatever their place in the queue, so
// that a prepared device does not wait for its job behind others.
func (p *devicePool) heldReady() []int64 {
	var ids []int64
	for _, d := range p.all {
		if d.d.HeldFor.Valid && d.ready() {
			ids = append(ids, d.d.HeldFor.Int64)
		}
	}
	return ids
}

// eligible keeps the workers with a usable matching device and counts the
// requests they can take now; when none is left, why says why in words
// for the user: no such device, or all of them out of service. (Busy
// devices keep their workers eligible: busyReason speaks of them.)
func (p *devicePool) eligible(m tasks.DeviceMatch, special bool, cands []*candidate) (elig []*candidate, free int, why string) {
	var matching, usable int
	health := map[string][]string{}
	for _, c := range cands {
		n := 0
		keep := false
		for _, d := range p.matching(m, c.w.ID) {
			matching++
			if !d.usable(special) {
				health[d.d.Health] = append(health[d.d.Health], d.d.Name)
				continue
			}
			usable++
			keep = true
			if (special && d.idle() && d.d.UpkeepWorkRequestID.Valid) || (!special && d.ready()) {
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

// pick chooses a worker with a free slot and a device request id may take
// now, and the device: the one held for the request if there is one, else
// the first free one by name, so that choices are stable. A job whose
// held device is still being prepared gets no worker and that device, for
// its waiting reason.
func (p *devicePool) pick(m tasks.DeviceMatch, special bool, id int64, cands []*candidate) (*candidate, *poolDevice) {
	if !special {
		for _, c := range cands {
			for _, d := range p.matching(m, c.w.ID) {
				if !d.d.HeldFor.Valid || d.d.HeldFor.Int64 != id {
					continue
				}
				if c.free > 0 && d.freeFor(id, false) {
					return c, d
				}
				return nil, d
			}
		}
	}
	var withDevice []*candidate
	for _, c := range cands {
		for _, d := range p.matching(m, c.w.ID) {
			if d.freeFor(id, special) {
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
		if d.freeFor(id, special) {
			return c, d
		}
	}
	return nil, nil
}

// busyReason says why a request waits although workers can run it: for a
// request that needs a device, whether its devices are busy, being
// checked, or their workers offline.
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
	var n int
	var checking []string
	for _, c := range elig {
		for _, d := range p.matching(*m, c.w.ID) {
			if !d.usable(false) {
				continue
			}
			n++
			if d.d.Needs != "" {
				checking = append(checking, d.d.Name+": "+d.d.Needs)
			}
		}
	}
	if len(checking) > 0 {
		return fmt.Sprintf("all %d devices matching %s are busy or being checked (%s)", n, m.String(), strings.Join(checking, ", "))
	}
	return fmt.Sprintf("all %d devices matching %s are busy", n, m.String())
}
