// dashboardcheck reads Grafana dashboard JSON files and checks each against Grafana's dashboard
// schema as published in grafana-foundation-sdk (generated from the schemas Grafana itself
// keeps): every field must be one the schema knows, of its type, and every panel's options and
// every query must match the schema of its panel plugin and data source. It prints one line per
// problem and exits 1 if there was any.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func check(path string) []error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []error{err}
	}
	var board dashboard.Dashboard
	var problems []error
	for _, err := range []error{board.UnmarshalJSONStrict(raw), board.Validate()} {
		if !isEmpty(err) {
			problems = append(problems, err)
		}
	}
	return problems
}

// isEmpty: the strict decoder returns its error list as an error even when the list is empty.
func isEmpty(err error) bool {
	var list cog.BuildErrors
	return err == nil || (errors.As(err, &list) && len(list) == 0)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboardcheck DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins() // panel options and queries are checked by their plugin's schema
	failed := false
	for _, path := range os.Args[1:] {
		for _, problem := range check(path) {
			failed = true
			// The SDK's errors hold one line per field.
			for _, line := range strings.Split(problem.Error(), "\n") {
				fmt.Printf("%s: %s\n", path, line)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}
