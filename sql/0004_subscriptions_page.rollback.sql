DROP INDEX subscriptions_page;
