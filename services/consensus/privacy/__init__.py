"""The on-chain privacy budget (issue 17): what each consumer has spent of each listing's ε."""
