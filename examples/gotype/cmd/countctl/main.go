// Command countctl creates a countdown task through the public API client
// (github.com/taskd/taskd/sdk and the generated api/taskdv1) and waits for
// it to end: what a program in another module does to use taskd.
//
//	countctl -endpoint HOST:PORT -token-file DATA_DIR/admin.token -ca DATA_DIR/pki/ca.crt -from 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/taskd/taskd/api/taskdv1"
	"github.com/taskd/taskd/sdk"
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:7070", "taskd API address")
	tokenFile := flag.String("token-file", "", "file holding an operator token")
	caFile := flag.String("ca", "", "the cluster CA (DATA_DIR/pki/ca.crt)")
	from := flag.Int("from", 5, "count down from")
	flag.Parse()
	if err := run(*endpoint, *tokenFile, *caFile, *from); err != nil {
		fmt.Fprintln(os.Stderr, "countctl:", err)
		os.Exit(1)
	}
}

func run(endpoint, tokenFile, caFile string, from int) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	ca, err := sdk.LoadCA(caFile)
	if err != nil {
		return err
	}
	c, err := sdk.NewClient(sdk.ClientConfig{Endpoint: endpoint, Token: strings.TrimSpace(string(token)), CA: ca})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := fmt.Sprintf(`{"from":%d,"step":"100ms"}`, from)
	created, err := c.Tasks.CreateTask(ctx, connect.NewRequest(&taskdv1.CreateTaskRequest{Type: "countdown", Spec: spec}))
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	id := created.Msg.Task.Id
	stream, err := c.Tasks.WatchTask(ctx, connect.NewRequest(&taskdv1.TaskRef{Id: id}))
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for stream.Receive() {
		if t := stream.Msg().Task; t.State == "succeeded" || t.State == "failed" || t.State == "cancelled" {
			fmt.Println(id, t.State)
			return nil
		}
	}
	return fmt.Errorf("watch %s: %w", id, stream.Err())
}
