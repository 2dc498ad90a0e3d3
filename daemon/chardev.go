package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// chardevPoll is how often waitChardevConnected asks QEMU.
const chardevPoll = 20 * time.Millisecond

// waitChardevConnected waits until QEMU's client socket chardev id is
// connected to our vhost-user server. A socket chardev with reconnect-ms
// connects asynchronously after chardev-add returns, and QEMU's
// vhost-user-base realize does not wait for it: a device_add sent before
// the connection fails with "vhost_backend_init failed: Protocol error"
// (QEMU 11.1.2; about one attach in two without this wait). QEMU reports
// an unconnected socket chardev with a "disconnected:" filename prefix in
// query-chardev.
func waitChardevConnected(ctx context.Context, c QMPConn, id string) error {
	for {
		raw, err := execute(ctx, c, "query-chardev", nil)
		if err != nil {
			return err
		}
		var infos []struct {
			Label    string `json:"label"`
			Filename string `json:"filename"`
		}
		if err := json.Unmarshal(raw, &infos); err != nil {
			return fmt.Errorf("query-chardev: decoding the reply: %w", err)
		}
		found := false
		for _, i := range infos {
			if i.Label != id {
				continue
			}
			found = true
			if !strings.HasPrefix(i.Filename, "disconnected:") {
				return nil
			}
		}
		if !found {
			return fmt.Errorf("query-chardev: chardev %s is not listed", id)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chardev %s did not connect to the vhost-user server: %w", id, ctx.Err())
		case <-time.After(chardevPoll):
		}
	}
}
