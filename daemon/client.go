package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to a daemon's control API over its Unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 5 * time.Second,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// RemoteError is an error reported by the daemon.
type RemoteError struct {
	Status int
	APIError
}

func (e *RemoteError) Error() string { return e.APIError.Error }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://nvdimm-backend"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("control socket %s: %w (is the daemon running? start it with 'nvdimm-backend serve')", c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control socket %s: reading reply: %w", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		re := &RemoteError{Status: resp.StatusCode}
		if err := json.Unmarshal(data, &re.APIError); err != nil || re.APIError.Error == "" {
			re.APIError = APIError{Code: "internal", Error: fmt.Sprintf("daemon replied %s", resp.Status)}
		}
		return re
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("control socket %s: reply to %s %s: %w", c.socket, method, path, err)
		}
	}
	return nil
}

func unwrapURL(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// Health calls GET /healthz.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/healthz", nil, &h)
	return h, err
}

// List calls GET /v1/devices.
func (c *Client) List(ctx context.Context) ([]Device, error) {
	var l DeviceList
	err := c.do(ctx, http.MethodGet, "/v1/devices", nil, &l)
	return l.Devices, err
}

// Get calls GET /v1/devices/{name}.
func (c *Client) Get(ctx context.Context, name string) (Device, error) {
	var d Device
	err := c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(name), nil, &d)
	return d, err
}

// Create calls POST /v1/devices.
func (c *Client) Create(ctx context.Context, req CreateRequest) (Device, error) {
	var d Device
	err := c.do(ctx, http.MethodPost, "/v1/devices", req, &d)
	return d, err
}

// Delete calls DELETE /v1/devices/{name}.
func (c *Client) Delete(ctx context.Context, name string, purge bool) error {
	p := "/v1/devices/" + url.PathEscape(name)
	if purge {
		p += "?purge=true"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil)
}

// Attach calls POST /v1/devices/{name}/attach.
func (c *Client) Attach(ctx context.Context, name string, req AttachRequest) (Device, error) {
	var d Device
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(name)+"/attach", req, &d)
	return d, err
}

// Detach calls POST /v1/devices/{name}/detach.
func (c *Client) Detach(ctx context.Context, name string) (Device, error) {
	var d Device
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(name)+"/detach", nil, &d)
	return d, err
}

// Metrics fetches /metrics in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://nvdimm-backend/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("control socket %s: %w", c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}
