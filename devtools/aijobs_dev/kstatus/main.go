// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus computes for Kubernetes objects: the
// status that Flux (a Kustomization with wait: true), kpt and other tools built on kstatus read.
//
// It reads JSON on stdin, one object or a List (as `kubectl get -o json` prints them), and prints
// one JSON line per object: {"kind", "name", "status", "message"}. It computes; it calls nothing.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("reading the objects: %w", err)
	}
	items := []unstructured.Unstructured{obj}
	if obj.IsList() {
		list, err := obj.ToList()
		if err != nil {
			return err
		}
		items = list.Items
	}
	enc := json.NewEncoder(out)
	for i := range items {
		res, err := status.Compute(&items[i])
		if err != nil {
			return fmt.Errorf("%s/%s: %w", items[i].GetKind(), items[i].GetName(), err)
		}
		v := verdict{items[i].GetKind(), items[i].GetName(), res.Status.String(), res.Message}
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}
