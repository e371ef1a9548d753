package cli

import (
	"context"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/client"
	"github.com/kiln-ci/kiln/schemas"
)

// deviceNameArg accepts exactly one argument, a device name.
func deviceNameArg(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want one argument, a device name; got %d", len(args))
	}
	return nil
}

func (a *app) listDevicesCommand() *cobra.Command {
	var deviceType, worker, health string
	cmd := &cobra.Command{
		Use:   "list-devices",
		Short: "List the devices under test",
		Long: `List the devices under test that lab workers declare, by name, as a table:
name, device type, worker, whether the worker still declares the device, the
scheduler's state (idle, reserved, running), health (good, unknown, bad,
maintenance, retired), whether a job used it since its last clean-up, the
special task it needs next (verify, cleanup, reset, repair, provision; "-" for
none) and the work request that holds it. show-device prints one device in
full.`,
		Example: `  kiln list-devices
  kiln list-devices --device-type rpi4 --health good`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			if health != "" && !schemas.DeviceHealth(health).Valid() {
				return usageErrorf("--health must be good, unknown, bad, maintenance or retired, not %q", health)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ds, err := c.ListDevices(ctx, client.DeviceFilter{DeviceType: deviceType, Worker: worker, Health: schemas.DeviceHealth(health)})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tWORKER\tDECLARED\tSTATE\tHEALTH\tDIRTY\tNEEDS\tLEASE")
			for _, d := range ds {
				lease, needs := "-", "-"
				if d.LeaseWorkRequest != nil {
					lease = strconv.FormatInt(*d.LeaseWorkRequest, 10)
				}
				if d.Needs != "" {
					needs = d.Needs
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%s\t%t\t%s\t%s\n", d.Name, d.DeviceType, d.Worker, d.Declared, d.State, d.Health, d.Dirty, needs, lease)
			}
			return tw.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&deviceType, "device-type", "", "list only devices of this type")
	f.StringVar(&worker, "worker", "", "list only the devices of the worker with this name")
	f.StringVar(&health, "health", "", "list only devices with this health (good, unknown, bad, maintenance, retired)")
	return cmd
}

func (a *app) showDeviceCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show-device NAME",
		Short: "Show a device under test and its latest history",
		Long: `Show a device under test: what its worker declares of it, its state and
health, and its latest changes (history, newest first).`,
		Args: deviceNameArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			d, err := c.GetDevice(ctx, args[0])
			if err != nil {
				return err
			}
			return printYAML(a.stdout, d)
		}),
	}
}

func (a *app) manageDeviceCommand() *cobra.Command {
	var (
		maintenance, retire, ret, check bool
		reason                          string
	)
	cmd := &cobra.Command{
		Use:   "manage-device NAME --maintenance|--retire|--return|--health-check [--reason TEXT]",
		Short: "Take a device under test out of service, return it, or check it now (admins)",
		Long: `Change the health of a device under test (admins only): --maintenance takes
it out of service for a while, --retire for good, and --return puts it back in
service with health unknown: the scheduler runs a health check (verify) on it
before it gets a job. Devices in maintenance or retired get no new work.
--health-check asks for a health check now: the scheduler runs a verify on the
device as soon as it is idle; a failed one escalates to reset and repair, and a
failed repair makes the device bad. Prints the device with its history.`,
		Example: `  kiln manage-device rpi4-01 --maintenance --reason "reflashing the bootloader"
  kiln manage-device rpi4-01 --return
  kiln manage-device rpi4-01 --health-check --reason "new power supply"`,
		Args: deviceNameArg,
		RunE: a.runE(func(ctx context.Context, _ *cobra.Command, args []string) error {
			var health schemas.DeviceHealth
			n := 0
			for _, o := range []struct {
				set bool
				h   schemas.DeviceHealth
			}{{maintenance, schemas.HealthMaintenance}, {retire, schemas.HealthRetired}, {ret, schemas.HealthUnknown}, {check, ""}} {
				if o.set {
					n++
					health = o.h
				}
			}
			if n != 1 {
				return usageErrorf("give exactly one of --maintenance, --retire, --return or --health-check")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var d schemas.Device
			if check {
				d, err = c.RequestHealthCheck(ctx, args[0], reason)
			} else {
				d, err = c.SetDeviceHealth(ctx, args[0], schemas.DeviceHealthChange{Health: health, Reason: reason})
			}
			if err != nil {
				return err
			}
			return printYAML(a.stdout, d)
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&maintenance, "maintenance", false, "take the device out of service for maintenance")
	f.BoolVar(&retire, "retire", false, "retire the device")
	f.BoolVar(&ret, "return", false, "return the device to service (health unknown until its next health check)")
	f.BoolVar(&check, "health-check", false, "run a health check (verify) on the device as soon as it is idle")
	f.StringVar(&reason, "reason", "", "why, for the device's history")
	return cmd
}
