# The `run` decision of services/common/policies/default.cedar, written in Rego, for the
# cedarpy-vs-regopy measurement of bench/gateway.py only (rdx evaluates the Cedar text).
package rdx

default allow := false

live if {
	input.grant.status == "granted"
	input.grant.consumer == input.principal.member
	input.operation in input.grant.operations
	not input.grant.expired
	input.grant.runs_left > 0
}

level_ok if input.resource.level in {"L1", "L2"}
level_ok if {
	input.resource.level == "L3"
	input.operation != "raw_download"
}
level_ok if {
	input.resource.level == "L4"
	input.operation in {"aggregation", "he_scoring"}
}

approved if input.resource.level == "L1"
approved if {
	input.resource.level in {"L2", "L3"}
	"provider" in input.grant.approvals
}
approved if {
	input.resource.level == "L4"
	"provider" in input.grant.approvals
	"association" in input.grant.approvals
}

allow if {
	input.principal.role in {"member_admin", "analyst"}
	not input.principal.suspended
	input.resource.status == "listed"
	live
	level_ok
	approved
}
