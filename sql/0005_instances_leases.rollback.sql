DROP TRIGGER subscriptions_notify ON subscriptions;
DROP FUNCTION gateway_subscriptions_notify();
DROP TABLE gateway_lease_history;
DROP TABLE gateway_leases;
DROP TABLE gateway_instances;
